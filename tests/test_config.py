"""GradMixConfig: every option checked once, in one table, and saved with the model."""

import dataclasses

import pytest
from conftest import sequential_cnn

from keras_gradmix import GradMixConfig, GradMixModel

ALL_OPTIONS = dict(
    attribution="layercam", mode="replace", target="loss", normalize="batch", mask="threshold",
    mask_area=[0.2, 0.3], alpha=2.0, beta=3.0, area_sampling="sample", fill="mix",
    label_mode="attribution", probability=0.7, warmup_epochs=3, value_range=[0.0, 255.0],
    normalization=[[0.5, 0.4, 0.3], [0.2, 0.25, 0.3]], bn_statistics="all", seed=5, output="b",
    check_inputs=False,
    prefix_tokens=1, token_grid=[7, 7], masked_fraction=1.0, stop_epoch=9, area_ramp_epochs=2,
    probability_ramp_epochs=4, policy={"gradmix": 0.5, "cutmix": 0.25, "mixup": 0.25},
    cutmix_alpha=0.5, mixup_alpha=0.4, placement="low", masked_as="positive", outlier_weight=0.25,
    border="clip", check_every=7, auxiliary_positives=False, unselectable_token_ids=[0, 101, 102],
)


def test_every_option_is_a_field_and_round_trips():
    assert set(GradMixConfig.fields()) == set(ALL_OPTIONS)
    config = GradMixConfig(**ALL_OPTIONS)
    assert config.get_config() == ALL_OPTIONS
    assert GradMixConfig.from_config(config.get_config()) == config
    assert config.mask_area == (0.2, 0.3) and config.value_range == (0.0, 255.0)
    assert config.normalization == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)) and config.token_grid == (7, 7)
    assert config.unselectable_token_ids == (0, 101, 102)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "paired"


def test_replace_checks_the_new_value():
    config = GradMixConfig()
    assert config.replace(mode="replace").mode == "replace" and config.mode == "paired"
    with pytest.raises(ValueError, match="mode must be one of"):
        config.replace(mode="swap")


def test_every_option_is_in_the_model_config():
    options = dict(layer=["conv1", "conv2"], **{**ALL_OPTIONS, "output": None})
    gm = GradMixModel(sequential_cnn(), **options)
    assert gm.options == GradMixConfig(**{**ALL_OPTIONS, "output": None})
    config = gm.get_config()
    assert {k: config[k] for k in options} == options
    clone = GradMixModel.from_config(config)
    assert {k: clone.get_config()[k] for k in options} == options


def test_options_object_and_keyword_overrides():
    base = GradMixConfig(attribution="layercam", seed=3)
    gm = GradMixModel(sequential_cnn(), "conv2", options=base, mode="replace")
    assert gm.options == base.replace(mode="replace", value_range=(0, 1))  # resolved


def test_unknown_option_names_the_closest_one():
    with pytest.raises(ValueError, match=r"Unknown GradMix option\(s\) \['atribution'\]\. Did you mean 'attribution'"):
        GradMixModel(sequential_cnn(), "conv2", atribution="layercam")


def test_value_range_is_read_from_the_model():
    import keras

    def model(*first):
        return keras.Sequential([keras.Input((8, 8, 1)), *first,
                                 keras.layers.Conv2D(2, 3, name="conv"),
                                 keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])

    assert GradMixModel(model(), "conv").options.value_range == (0.0, 1.0)
    assert GradMixModel(model(keras.layers.Rescaling(1 / 255)), "conv").options.value_range == (0.0, 255.0)
    scaled = model(keras.layers.Rescaling(1 / 127.5, offset=-1))
    assert GradMixModel(scaled, "conv").options.value_range == (0.0, 255.0)
    assert GradMixModel(scaled, "conv", value_range=(0, 1)).options.value_range == (0.0, 1.0)


def test_a_function_target_round_trips_when_registered():
    import keras

    @keras.saving.register_keras_serializable(package="tests")
    def margin(y_true, y_pred):
        return y_pred[:, 1] - y_pred[:, 0]

    config = GradMixConfig(target=margin)
    assert config.get_config()["target"]["config"] == "tests>margin"
    assert GradMixConfig.from_config(config.get_config()).target is margin
