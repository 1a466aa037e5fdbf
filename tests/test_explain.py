"""keras_gradmix.attribution_maps: any classifier's maps in one call."""

import warnings

import keras
import numpy as np
import pytest
from scipy import stats

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


def sigmoid_model_drops(x, area_side=2):
    """Brute force for identity_model: class 0's probability is sigmoid(2 mean(x)),
    its map the image (min-max normalised); boxes of area_side^2 px shifted
    inside the image, at the peak, the draw's maximum and the minimum."""
    draw = np.random.default_rng(0).uniform(size=x.shape[:3])

    def prob(image):
        return 1.0 / (1.0 + np.exp(-2.0 * image.mean()))

    def blank(image, flat_index):
        cy, cx = np.unravel_index(flat_index, image.shape)
        top = min(max(cy - area_side // 2, 0), image.shape[0] - area_side)
        left = min(max(cx - area_side // 2, 0), image.shape[1] - area_side)
        out = image.copy()
        out[top:top + area_side, left:left + area_side] = 0.0
        return out

    clean = np.array([prob(i[..., 0]) for i in x])
    drops = {place: np.array([c - prob(blank(i[..., 0], pick(i[..., 0], d)))
                              for c, i, d in zip(clean, x, draw)])
             for place, pick in (("peak", lambda i, d: i.argmax()), ("random", lambda i, d: d.argmax()),
                                 ("low", lambda i, d: i.argmin()))}
    return clean, drops


def test_faithfulness_exact_drops_spread_and_intervals_of_a_hand_built_model():
    # Ramps peaking in a corner (and lowest in the opposite one), with shifted
    # 2x2 boxes (area 0.25 of 4x4): the same 4 pixels blanked at every place.
    ramp = np.arange(16, dtype="float32").reshape(4, 4) / 15.0
    x = np.stack([ramp, ramp[::-1, ::-1], ramp.T, 0.5 * ramp[::-1]])[..., None]
    model = identity_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = keras_gradmix.faithfulness(model, x, [0] * 4, layer="feat", area=0.25, seed=0)
    clean, drops = sigmoid_model_drops(x)
    np.testing.assert_allclose(result["clean"], clean, rtol=1e-6)
    drops["peak - random"] = drops["peak"] - drops["random"]
    for key, expected in drops.items():
        np.testing.assert_allclose(result["per_image"][key], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result[key], expected.mean(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result["std"][key], expected.std(ddof=1), rtol=1e-4, atol=1e-7)
        half = stats.t.ppf(0.975, 3) * expected.std(ddof=1) / 2.0
        np.testing.assert_allclose(result["interval"][key], [expected.mean() - half, expected.mean() + half],
                                   rtol=1e-4, atol=1e-7)
    assert result["peak"] > result["random"] > result["low"]
    low, high = result["interval"]["peak - random"]
    assert any("contains 0" in str(w.message) for w in caught) == (low <= 0 <= high)
    assert not any("near chance" in str(w.message) for w in caught)
    # A softmax at the end is detected (output="auto"): the same drops, not softmaxed twice.
    softmax = keras.Sequential([model, keras.layers.Softmax()])
    for output in ("auto", "probabilities"):
        same = keras_gradmix.faithfulness(softmax, x, [0] * 4, layer=f"{model.name}/feat", seed=0,
                                          output=output)
        np.testing.assert_allclose([same[k] for k in drops], [result[k] for k in drops],
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="outputs are probabilities"):
        keras_gradmix.faithfulness(softmax, x, [0] * 4, layer=f"{model.name}/feat", output="logits")
    with pytest.raises(ValueError, match="look like logits"):
        keras_gradmix.faithfulness(model, x, [0] * 4, layer="feat", output="probabilities")


def test_t_quantile_matches_scipy():
    from keras_gradmix.faithfulness import t_quantile

    for dof in (1, 2, 3, 4, 5, 9, 30, 999):
        assert t_quantile(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=3e-3)


def test_faithfulness_warns_when_the_answer_says_nothing():
    x = np.random.default_rng(0).random((6, 4, 4, 1)).astype("float32")
    chance = identity_model()
    chance.get_layer("head").set_weights([np.zeros((1, 2), "float32")])  # p = 0.5 for both classes
    with pytest.warns(UserWarning, match="near chance"):
        keras_gradmix.faithfulness(chance, x, [0] * 6, layer="feat")
    with pytest.warns(UserWarning, match="one image gives no interval"):
        keras_gradmix.faithfulness(identity_model(), x[:1], [0], layer="feat")


@pytest.mark.parametrize("kwargs, message", [
    (dict(area=0.0), "area must be in"),
    (dict(fill="noise"), "constant fill"),
    (dict(output="softmax"), "output must be one of"),
])
def test_faithfulness_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_gradmix.faithfulness(identity_model(), np.ones((2, 4, 4, 1), "float32"), [0, 1],
                                   layer="feat", **kwargs)
