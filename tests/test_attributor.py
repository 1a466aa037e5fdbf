"""The attribution as its own part: keras_gradmix.Attributor."""

import keras
import numpy as np
import pytest
from conftest import to_numpy
from test_explain import identity_model

import keras_gradmix
from keras_gradmix import Attributor, GradMixModel
from keras_gradmix.inspection import shape_choice
from keras_gradmix.zoo import small_cnn


def test_exact_maps_of_a_hand_built_model():
    """LayerCAM at 'feat' of x -> 1x1 conv (w = 1) -> mean -> (+x, -x): the
    image itself for class 0, nothing for class 1; the predicted class (0)
    without labels."""
    x = np.arange(32, dtype="float32").reshape(2, 4, 4, 1) / 31.0
    attributor = Attributor(identity_model(), "feat")
    maps = to_numpy(attributor(x, np.array([0, 1])))
    image = (x[0, ..., 0] - x[0].min()) / (x[0].max() - x[0].min())
    np.testing.assert_allclose(maps[0], image, atol=1e-6)
    np.testing.assert_array_equal(maps[1], np.zeros((4, 4)))
    predicted = Attributor(identity_model(), "feat", target="prediction")
    np.testing.assert_allclose(to_numpy(predicted(x[:1])), image[None], atol=1e-6)


def test_layer_none_is_resolved_by_the_first_forward_and_kept():
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    attributor = Attributor(small_cnn(0))
    assert attributor.layer is None and attributor.layer_paths is None
    maps = to_numpy(attributor(x, np.array([1, 2])))
    picked = attributor.layer  # the last spatial map, by the wrapper's rule
    assert picked == shape_choice(GradMixModel(attributor.model), x)
    assert maps.shape == (2, 28, 28)
    np.testing.assert_allclose(maps, to_numpy(Attributor(attributor.model, picked)(x, np.array([1, 2]))))


def test_attribution_maps_and_faithfulness_build_no_training_wrapper(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a GradMixModel was built")

    monkeypatch.setattr(GradMixModel, "__init__", refuse)
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 28, 28, 1)).astype("float32"), np.array([0, 1, 2, 3])
    model = small_cnn(0)
    maps = keras_gradmix.attribution_maps(model, x, y, layer="conv2")
    np.testing.assert_allclose(maps, to_numpy(Attributor(model, "conv2")(x, y)), atol=1e-6)
    with pytest.warns(UserWarning):  # an untrained model: near chance
        result = keras_gradmix.faithfulness(model, x, y, layer="conv2")
    assert set(result) >= {"peak", "random", "low"}


def test_the_wrapper_holds_one_attributor_that_follows_its_options():
    gm = GradMixModel(small_cnn(0), "conv2", attribution="gradcam", normalize="batch", seed=0)
    attributor = gm.attributor
    assert (attributor.layer, attributor.method, attributor.normalize) == ("conv2", "gradcam", "batch")
    gm.options = gm.options.replace(attribution="gradcam++")
    assert gm.attributor.method == "gradcam++" and gm.attributor.layer == "conv2"
    unresolved = GradMixModel(small_cnn(0), seed=0)
    x = np.random.default_rng(1).random((2, 28, 28, 1)).astype("float32")
    unresolved.inspect_batch(x, np.array([0, 1]))
    picked = unresolved.attributor.layer
    assert picked is not None and unresolved.layer == picked
    unresolved.options = unresolved.options.replace(normalize="batch")
    assert unresolved.attributor.layer == picked  # a resolved layer survives new options


def test_preview_masks_the_attributors_maps():
    x = np.random.default_rng(2).random((3, 28, 28, 1)).astype("float32")
    y = np.array([3, 1, 4])
    gm = GradMixModel(small_cnn(0), "conv2", attribution="gradcam", seed=0)
    np.testing.assert_allclose(to_numpy(gm.preview(x, y).maps),
                               to_numpy(Attributor(gm.model, "conv2", "gradcam")(x, y)), atol=1e-6)


def test_multi_output_models_name_the_attributed_output():
    inputs = keras.Input((4, 4, 1))
    feat = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feat)
    first = keras.layers.Dense(2, use_bias=False, kernel_initializer="ones", name="first")(pooled)
    second = keras.layers.Dense(2, use_bias=False, kernel_initializer="ones", name="second")(pooled)
    model = keras.Model(inputs, [first, second])
    model.get_layer("second").set_weights([np.array([[-1.0, -1.0]], "float32")])
    x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1) / 15.0
    with pytest.raises(ValueError, match="choose the one whose score GradMix attributes with output="):
        Attributor(model, "feat")(x, np.array([0]))
    np.testing.assert_allclose(to_numpy(Attributor(model, "feat", output="first")(x, np.array([0])))[0],
                               x[0, ..., 0], atol=1e-6)
    np.testing.assert_array_equal(to_numpy(Attributor(model, "feat", output=1)(x, np.array([0]))),
                                  np.zeros((1, 4, 4)))  # its weights are negative: no evidence


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="cam"), "attribution must be one of"),
    (dict(normalize="dataset"), "normalize must be one of"),
    (dict(target="logit"), "target must be one of"),
    (dict(token_grid=(0, 3)), "token_grid must be"),
    (dict(layer="nope"), "No layer 'nope'"),
])
def test_bad_settings_are_named_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Attributor(identity_model(), **{"layer": "feat", **kwargs})


def test_a_loss_target_needs_the_trainers_loss():
    x = np.ones((1, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match="target='loss' attributes a loss; the caller computes it"):
        Attributor(identity_model(), "feat", target="loss")(x, np.array([0]))


def test_attribution_maps_names_an_unknown_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['mask_area'\]"):
        keras_gradmix.attribution_maps(identity_model(), np.ones((1, 4, 4, 1), "float32"), [0],
                                       layer="feat", mask_area=(0.1, 0.2))
