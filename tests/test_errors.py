"""Bad input gets a clear error, at construction or before the first update."""

import keras
import numpy as np
import pytest
from conftest import (
    SubclassedCNN,
    functional_cnn,
    nested_cnn,
    sequential_cnn,
    sparse_ce,
    subclassed_cnn,
    tf_only,
)

from keras_gradmix import GradMixModel


def first_step_error(gm, x, y, match):
    """The error is raised while tracing the first step: no weight has moved."""
    before = [w.copy() for w in gm.model.get_weights()]
    with pytest.raises(ValueError, match=match):
        gm.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    if keras.backend.backend() == "jax":
        return  # Keras' JAX fit() leaves the variables purged after an error
    for a, b in zip(before, gm.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def compiled(model, **options):
    gm = GradMixModel(model, **options)
    gm.compile(optimizer="sgd", loss=sparse_ce())
    return gm


# ------------------------------------------------------------ at construction
def test_unknown_layer_lists_candidates():
    with pytest.raises(ValueError, match=r"No layer 'conv5'.*\['conv1', 'pool', 'conv2'\]"):
        GradMixModel(sequential_cnn(), "conv5")


def test_layer_must_be_a_name():
    with pytest.raises(ValueError, match="layer name or a '/'-separated path"):
        GradMixModel(sequential_cnn(), 3)


def test_layer_output_not_4d_in_a_graph():
    with pytest.raises(ValueError, match=r"'gap' has output shape \(None, 8\).*4-D"):
        GradMixModel(functional_cnn(), "gap")


def test_model_with_several_outputs():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    flat = keras.layers.Flatten()(h)
    model = keras.Model(inputs, [keras.layers.Dense(3)(flat), keras.layers.Dense(2)(flat)])
    with pytest.raises(ValueError, match="has 2 outputs; choose the one .* output="):
        GradMixModel(model, "conv")


def test_not_a_keras_model():
    with pytest.raises(ValueError, match="wraps a keras.Model"):
        GradMixModel(keras.layers.Conv2D(2, 3), "conv")


@pytest.mark.parametrize(
    "layer,match",
    [
        ([], "at least one layer"),
        (["conv2", "conv9"], "No layer 'conv9'"),
        (["conv2", "gap"], "'gap' has output shape"),
    ],
)
def test_bad_layer_lists(layer, match):
    with pytest.raises(ValueError, match=match):
        GradMixModel(sequential_cnn(), layer)


def test_a_functional_layer_that_does_not_reach_the_output():
    inputs = keras.Input((8, 8, 1))
    keras.layers.Conv2D(2, 3, name="side")(inputs)  # called on the input, unused
    h = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    with pytest.raises(ValueError, match="'side' .* is called on the inputs of .* does not reach"):
        GradMixModel(model, "side")


# ------------------------------------------------------- at the first step
def test_layer_output_not_4d_in_a_subclassed_model(batch):
    first_step_error(compiled(subclassed_cnn(), layer="gap"), *batch, r"'gap' returned \(8, 8\).*4-D")


@pytest.mark.parametrize("y", [np.zeros((8, 3)), np.zeros((8, 10, 2)), np.zeros((8, 2))])
def test_labels_fit_neither_sparse_nor_one_hot(batch, y):
    first_step_error(compiled(sequential_cnn(), layer="conv2"), batch[0], y, "fit neither sparse")


def test_images_must_be_4d():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
    x, y = np.zeros((4, 16), "float32"), np.zeros(4, "int32")
    first_step_error(compiled(model), x, y, r"images of shape \(batch, height, width, channels\)")


@tf_only("JAX and PyTorch steps always see concrete image sizes")
def test_image_size_must_be_static():
    import tensorflow as tf

    model = keras.Sequential(
        [keras.Input((None, None, 1)), keras.layers.Conv2D(2, 3, name="conv"),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    )
    ds = tf.data.Dataset.from_generator(
        lambda: iter([(np.zeros((2, 8, 8, 1), "float32"), np.zeros(2, "int32"))]),
        output_signature=(tf.TensorSpec((None, None, None, 1)), tf.TensorSpec((None,), tf.int32)),
    )
    gm = compiled(model, layer="conv")
    with pytest.raises(ValueError, match="height and width are known"):
        gm.fit(ds, epochs=1, verbose=0)


def test_no_4d_layer_for_layer_none():
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    x, y = np.zeros((2, 4, 4, 1), "float32"), np.zeros(2, "int32")
    first_step_error(compiled(model), x, y, "No layer .* has a 4-D")


def test_several_outputs_from_a_subclassed_model(batch):
    class TwoHeads(SubclassedCNN):
        def call(self, x, training=None):
            h = self.gap(self.conv2(self.pool(self.conv1(x))))
            return self.logits(h), h

    model = TwoHeads()
    model(batch[0])
    first_step_error(compiled(model, layer="conv2"), *batch, r"has 2 outputs .*output=")


def test_layer_that_runs_twice(batch):
    class Twice(SubclassedCNN):
        def call(self, x, training=None):
            h = self.conv1(x)
            return self.logits(self.gap(self.conv1(h[..., :1])))

    model = Twice()
    model(batch[0])
    first_step_error(compiled(model, layer="conv1"), *batch, "ran 2 times")


def test_layer_not_on_the_path_to_the_output(batch):
    class SideBranch(SubclassedCNN):
        def call(self, x, training=None):
            self.conv2(self.pool(self.conv1(x)))  # computed, unused
            return self.logits(self.gap(self.conv1(x)))

    model = SideBranch()
    model(batch[0])
    first_step_error(compiled(model, layer="conv2"), *batch, "does not depend on layer 'conv2'")


def test_single_unit_binary_classifier_trains_with_the_label_target(batch):
    gm = GradMixModel(sequential_cnn(classes=1), "conv2", attribution="layercam")
    gm.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    y = (batch[1] % 2).astype("float32")[:, None]
    assert np.isfinite(gm.fit(batch[0], y, epochs=1, verbose=0).history["loss"]).all()


def test_compile_without_loss(batch):
    gm = GradMixModel(nested_cnn(), "backbone/conv2")
    gm.compile(optimizer="sgd")
    first_step_error(gm, *batch, "compile it with one")
