"""The classification objective: its losses and the attributed scores (label,
multi-label, function, binary, one output of several) on hand-built models."""

import keras
import numpy as np
import pytest
from conftest import sequential_cnn, to_numpy
from reference import cross_entropy

from keras_gradmix import GradMixModel, MaskedBatch


def test_mix_loss_mixes_labels_by_area():
    gm = GradMixModel(sequential_cnn(), "conv2", fill="mix", mode="replace")
    gm.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    y = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    kept = np.array([0.9, 0.5, 0.75, 0.6], "float32")
    partner = np.array([1, 0, 3, 2])
    masked = MaskedBatch(None, None, None, kept, 1 - kept, partner, None)
    loss = gm.gradmix_loss(None, y, None, None, logits, None, masked)
    labels = np.argmax(y, axis=1)
    expected = np.mean(
        kept * cross_entropy(logits, labels) + (1 - kept) * cross_entropy(logits, labels[partner])
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_paired_loss_weighs_only_masked_images_by_their_kept_area():
    gm = GradMixModel(sequential_cnn(), "conv2")
    gm.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.array([0, 2, 1])
    logits = np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
    kept = np.array([0.7, 0.6, 1.0], "float32")
    applied = np.array([True, True, False])
    masked = MaskedBatch(None, None, None, kept, None, None, applied)
    loss = gm.gradmix_loss(None, labels, None, 0.25, logits, np.array([1.0, 2.0, 1.0], "float32"), masked)
    expected = 0.25 + np.mean(np.array([0.7, 2 * 0.6, 0.0]) * cross_entropy(logits, labels))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


# --------------------------------------------------- attribution targets
def linear_model(weights, heads=None):
    """(4, 4, 2) images -> 'features' (identity) -> GAP -> Dense(weights), no
    bias: the gradient of logit k w.r.t. channel c is weights[c, k] / 16 at every
    pixel, so a LayerCAM map is ``sum_c x_c * relu(v_c)`` for v = weights @ t."""
    inputs = keras.Input((4, 4, 2))
    features = keras.layers.Identity(name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = []
    for name, w in (heads or {"logits": weights}).items():
        dense = keras.layers.Dense(w.shape[1], use_bias=False, name=name)
        outputs.append(dense(pooled))
        dense.set_weights([w])
    return keras.Model(inputs, outputs if heads else outputs[0])


def expected_map(x, v):
    m = (x * np.maximum(v, 0)).sum(-1)
    low, high = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    return (m - low) / (high - low + 1e-8)


W = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0]], "float32")  # channels x classes
X = np.random.default_rng(0).random((2, 4, 4, 2)).astype("float32")


def maps_of(model, labels, **options):
    gm = GradMixModel(model, "features", attribution="layercam", **options)
    return to_numpy(gm.preview(X, labels).maps)


@pytest.mark.parametrize(
    "labels,v",
    [
        (np.array([0, 0]), W[:, 0]),  # sparse: class 0 -> channel 0
        (np.array([[1, 0, 1], [1, 0, 1]], "float32"), W[:, 0] + W[:, 2]),  # multi-label: summed
    ],
)
def test_label_target_of_sparse_and_multi_label_labels(labels, v):
    np.testing.assert_allclose(maps_of(linear_model(W), labels), expected_map(X, v), atol=1e-5)


def test_a_function_target():
    margin = lambda y_true, y_pred: y_pred[:, 2] - y_pred[:, 0]  # noqa: E731
    got = maps_of(linear_model(W), np.array([0, 1]), target=margin)
    np.testing.assert_allclose(got, expected_map(X, W[:, 2] - W[:, 0]), atol=1e-5)  # channel 1


def test_a_single_logit_binary_classifier_attributes_the_true_class():
    w = np.array([[1.0], [-1.0]], "float32")  # logit = mean(x0) - mean(x1)
    got = maps_of(linear_model(w), np.array([1, 0]))
    np.testing.assert_allclose(got[0], expected_map(X, w[:, 0])[0], atol=1e-5)  # label 1: +logit
    np.testing.assert_allclose(got[1], expected_map(X, -w[:, 0])[1], atol=1e-5)  # label 0: -logit


def test_one_output_of_a_multi_output_model_is_attributed_and_all_train():
    heads = {"a": W, "b": np.array([[0.0, 1.0], [1.0, 0.0]], "float32")}
    labels = (np.array([0, 0]), np.array([0, 1]))
    got = maps_of(linear_model(None, heads), labels, output="b")
    np.testing.assert_allclose(got[0], expected_map(X, heads["b"][:, 0])[0], atol=1e-5)
    np.testing.assert_allclose(got[1], expected_map(X, heads["b"][:, 1])[1], atol=1e-5)
    assert np.allclose(maps_of(linear_model(None, heads), labels, output=0),
                       expected_map(X, W[:, 0]), atol=1e-5)
    with pytest.raises(ValueError, match="has 2 outputs; choose the one .* output="):
        GradMixModel(linear_model(None, heads), "features")
    model = linear_model(None, heads)
    gm = GradMixModel(model, "features", output="b", fill="mix", seed=0)
    losses = {"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "b": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses)
    before = [w.copy() for w in model.get_weights()]
    history = gm.fit(X, {"a": labels[0], "b": labels[1]}, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))  # both heads learn


def test_per_output_loss_logs_are_the_clean_batch_s():
    heads = {"a": W, "b": np.array([[0.0, 1.0], [1.0, 0.0]], "float32")}
    labels = {"a": np.array([0, 2]), "b": np.array([0, 1])}
    model = linear_model(None, heads)
    gm = GradMixModel(model, "features", output="b", fill="mix", seed=0)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    gm.compile(optimizer=keras.optimizers.SGD(0.0), loss={"a": ce, "b": ce})
    logs = gm.train_on_batch(X, labels, return_dict=True)
    logits = model(X)
    for name, index in (("a", 0), ("b", 1)):
        expected = float(to_numpy(ce(labels[name], logits[index])))
        assert logs[f"{name}_loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] > logs["a_loss"] + logs["b_loss"]  # plus the masked terms
