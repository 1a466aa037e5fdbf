"""GradMixConfig: every option checked once, in one table, and saved with the model."""

import dataclasses

import pytest
from conftest import sequential_cnn

from keras_gradmix import GradMixConfig, GradMixModel

ALL_OPTIONS = dict(
    attribution="layercam", mode="replace", target="loss", normalize="batch", mask="threshold",
    mask_area=[0.2, 0.3], alpha=2.0, beta=3.0, area_sampling="sample", fill="mix",
    label_mode="attribution", probability=0.7, warmup_epochs=3, value_range=[0.0, 255.0],
    bn_statistics="all", seed=5,
)


def test_every_option_is_a_field_and_round_trips():
    assert set(GradMixConfig.fields()) == set(ALL_OPTIONS)
    config = GradMixConfig(**ALL_OPTIONS)
    assert config.get_config() == ALL_OPTIONS
    assert GradMixConfig.from_config(config.get_config()) == config
    assert config.mask_area == (0.2, 0.3) and config.value_range == (0.0, 255.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "paired"


def test_replace_checks_the_new_value():
    config = GradMixConfig()
    assert config.replace(mode="replace").mode == "replace" and config.mode == "paired"
    with pytest.raises(ValueError, match="mode must be one of"):
        config.replace(mode="swap")


def test_every_option_is_in_the_model_config():
    options = dict(layer=["conv1", "conv2"], **ALL_OPTIONS)
    gm = GradMixModel(sequential_cnn(), **options)
    assert gm.options == GradMixConfig(**ALL_OPTIONS)
    config = gm.get_config()
    assert {k: config[k] for k in options} == options
    clone = GradMixModel.from_config(config)
    assert {k: clone.get_config()[k] for k in options} == options


def test_options_object_and_keyword_overrides():
    base = GradMixConfig(attribution="layercam", seed=3)
    gm = GradMixModel(sequential_cnn(), "conv2", options=base, mode="replace")
    assert gm.options == base.replace(mode="replace")


def test_unknown_option_names_the_closest_one():
    with pytest.raises(ValueError, match=r"Unknown GradMix option\(s\) \['atribution'\]\. Did you mean 'attribution'"):
        GradMixModel(sequential_cnn(), "conv2", atribution="layercam")


@pytest.mark.parametrize(
    "option,value,match",
    [
        ("attribution", "cam", r"attribution must be one of \('gradcam', 'layercam', 'gradcam\+\+'\)"),
        ("mode", "swap", r"mode must be one of \('paired', 'replace'\)"),
        ("target", "logit", r"target must be one of \('label', 'prediction', 'loss'\)"),
        ("normalize", "global", r"normalize must be one of \('image', 'batch'\)"),
        ("mask", "circle", r"mask must be one of \('box', 'threshold'\)"),
        ("mask_area", (0.0, 0.5), "mask_area must satisfy 0 < low <= high < 1"),
        ("mask_area", (0.3, 1.2), "mask_area must satisfy 0 < low <= high < 1"),
        ("mask_area", (0.5, 0.2), "mask_area must satisfy 0 < low <= high < 1"),
        ("mask_area", 0.3, "mask_area must be a pair"),
        ("alpha", 0.0, "alpha and beta must be > 0"),
        ("beta", -1.0, "alpha and beta must be > 0"),
        ("area_sampling", "pixel", r"area_sampling must be one of \('batch', 'sample'\)"),
        ("fill", "blur", "fill must be 'noise', 'mix' or a number"),
        ("fill", True, "fill must be 'noise', 'mix' or a number"),
        ("label_mode", "loss", r"label_mode must be one of \('area', 'attribution'\)"),
        ("probability", 1.5, r"probability must be in \[0, 1\]"),
        ("probability", True, r"probability must be in \[0, 1\]"),
        ("warmup_epochs", -1, "warmup_epochs must be an integer >= 0"),
        ("warmup_epochs", 1.5, "warmup_epochs must be an integer >= 0"),
        ("value_range", (1.0, 0.0), r"value_range must be \(low, high\) with low < high"),
        ("value_range", "0-255", r"value_range must be \(low, high\) with low < high"),
        ("bn_statistics", "none", r"bn_statistics must be one of \('clean', 'all'\)"),
        ("seed", 1.5, "seed must be an int or None"),
    ],
)
def test_bad_option_values(option, value, match):
    with pytest.raises(ValueError, match=match):
        GradMixConfig(**{option: value})
    with pytest.raises(ValueError, match=match):  # the same check from the wrapper
        GradMixModel(sequential_cnn(), "conv2", **{option: value})
