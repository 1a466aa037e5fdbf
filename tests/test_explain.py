"""keras_gradmix.attribution_maps: any classifier's maps in one call."""

import keras
import numpy as np
import pytest

import keras_gradmix
from conftest import cnn_layers, to_numpy


def identity_model():
    """x -> 'feat' (a 1x1 identity conv) -> mean -> logits (+x, -x).

    LayerCAM at 'feat' is ``x * ReLU(w_c / 16)``: the image itself (min-max
    normalised) for class 0 (w = +1), all zeros for class 1 (w = -1)."""
    inputs = keras.Input((4, 4, 1))
    feat = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feat)
    logits = keras.layers.Dense(2, use_bias=False, name="head")(pooled)
    model = keras.Model(inputs, logits)
    model.get_layer("head").set_weights([np.array([[1.0, -1.0]], "float32")])
    return model


def test_exact_maps_of_a_hand_built_model():
    x = np.arange(32, dtype="float32").reshape(2, 4, 4, 1) / 31.0
    model = identity_model()
    image = (x[0, ..., 0] - x[0].min()) / (x[0].max() - x[0].min())
    maps = keras_gradmix.attribution_maps(model, x, [0, 1], layer="feat")
    assert maps.shape == (2, 4, 4) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], image, atol=1e-6)
    np.testing.assert_array_equal(maps[1], np.zeros((4, 4)))  # no positive gradient
    # No labels: the predicted class (0: the pixels are positive), the layer found.
    np.testing.assert_allclose(keras_gradmix.attribution_maps(model, x[:1]), image[None], atol=1e-6)
    onehot = keras_gradmix.attribution_maps(model, x, np.eye(2)[[0, 1]], layer="feat")
    np.testing.assert_array_equal(onehot, maps)


def test_same_maps_as_training_would_mask_in_batches_and_model_untouched():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 1)), *cnn_layers(classes=3, bn=True)])
    x = np.random.default_rng(0).random((7, 12, 12, 1), dtype="float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    weights = [to_numpy(w) for w in model.weights]
    maps = keras_gradmix.attribution_maps(model, x, y, layer="conv2", attribution="gradcam",
                                          batch_size=3)
    preview = keras_gradmix.GradMixModel(model, layer="conv2", attribution="gradcam").preview(x, y)
    np.testing.assert_allclose(maps, to_numpy(preview.maps), atol=1e-6)
    for before, after in zip(weights, model.weights):  # BatchNorm statistics included
        np.testing.assert_array_equal(before, to_numpy(after))
    assert not model.compiled


@pytest.mark.parametrize("kwargs, message", [
    (dict(images=np.zeros((0, 4, 4, 1))), "non-empty batch"),
    (dict(labels=[0]), "2 images but 1 labels"),
    (dict(labels=None, target="label"), "target='label' needs labels"),
    (dict(target="loss"), "'label' or 'prediction'"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(attribution="cam"), "attribution"),
    (dict(layer="nope"), "No layer 'nope'"),
])
def test_errors(kwargs, message):
    arguments = {"images": np.ones((2, 4, 4, 1), "float32"), "labels": [0, 1], "layer": "feat", **kwargs}
    with pytest.raises(ValueError, match=message):
        keras_gradmix.attribution_maps(identity_model(), **arguments)


def test_faithfulness_exact_drops_of_a_hand_built_model():
    # Class 0's probability is sigmoid(2 * mean(x)) and its map the image itself:
    # x[i, j] = (4 i + j) / 15 peaks at (3, 3) and is lowest at (0, 0).
    x = (np.arange(16, dtype="float32") / 15.0).reshape(1, 4, 4, 1)
    model = identity_model()
    result = keras_gradmix.faithfulness(model, x, [0], layer="feat", area=0.25, seed=0)

    def prob(image):
        return 1.0 / (1.0 + np.exp(-2.0 * image.mean()))

    def blank(cy, cx):  # a 2x2 box (area 0.25 of 4x4), rows [cy - 1, cy + 1), clipped
        out = x[0, ..., 0].copy()
        out[max(cy - 1, 0):cy + 1, max(cx - 1, 0):cx + 1] = 0.0
        return out

    clean = prob(x[0])
    centre = np.unravel_index(np.random.default_rng(0).uniform(size=(1, 4, 4))[0].argmax(), (4, 4))  # (2, 1)
    np.testing.assert_allclose(result["clean"], [clean], rtol=1e-6)
    np.testing.assert_allclose(result["peak"], clean - prob(blank(3, 3)), rtol=1e-5)  # 10, 11, 14, 15
    np.testing.assert_allclose(result["low"], clean - prob(blank(0, 0)), atol=1e-7)  # only (0, 0) = 0
    np.testing.assert_allclose(result["low"], 0.0, atol=1e-7)
    np.testing.assert_allclose(result["random"], clean - prob(blank(*centre)), rtol=1e-5)
    assert result["peak"] > result["random"] >= result["low"]
    assert set(result["per_image"]) == {"peak", "random", "low"}
    # Probabilities in, the same drops; a softmax model's output said so.
    softmax = keras.Sequential([model, keras.layers.Softmax()])
    same = keras_gradmix.faithfulness(softmax, x, [0], layer=f"{model.name}/feat", seed=0,
                                      output="probabilities")
    np.testing.assert_allclose([same[k] for k in ("peak", "random", "low")],
                               [result[k] for k in ("peak", "random", "low")], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(area=0.0), "area must be in"),
    (dict(fill="noise"), "constant fill"),
    (dict(output="softmax"), "'logits' or 'probabilities'"),
])
def test_faithfulness_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_gradmix.faithfulness(identity_model(), np.ones((2, 4, 4, 1), "float32"), [0, 1],
                                   layer="feat", **kwargs)
