"""The options of issue 3, with exact expectations on hand-built tensors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import mnist_cnn, sequential_cnn, sparse_ce, to_numpy, xla_only

from keras_gradmix import (
    GradMixModel,
    attribution_maps,
    attribution_share,
    gradcam_plus_plus,
    layercam,
    threshold_masks,
)


# ----------------------------------------------------------------- attribution
def test_layercam_is_activation_times_positive_gradient():
    acts = np.array([[[[1.0, 2.0], [3.0, 0.5]]]])  # (1, 1, 2, 2)
    grads = np.array([[[[-1.0, 2.0], [0.5, -4.0]]]])
    # pixel 0: 1*0 + 2*2 = 4; pixel 1: 3*0.5 + 0.5*0 = 1.5 (no final ReLU)
    np.testing.assert_allclose(to_numpy(layercam(acts, grads)), [[[4.0, 1.5]]])
    np.testing.assert_allclose(to_numpy(layercam(-acts, np.abs(grads))), [[[-5.0, -3.5]]])


def test_gradcam_plus_plus_closed_form():
    acts = np.array([[[[1.0], [3.0]]]])  # one channel, pixels A = 1, 3; sum A = 4
    grads = np.array([[[[2.0], [-1.0]]]])
    # alpha = g^2 / (2 g^2 + 4 g^3): 4 / 40 = 0.1 and 1 / (2 - 4) = -0.5;
    # weight = 0.1 * relu(2) + (-0.5) * relu(-1) = 0.2; map = relu(0.2 * A).
    np.testing.assert_allclose(to_numpy(gradcam_plus_plus(acts, grads)), [[[0.2, 0.6]]], rtol=1e-5)
    zero = to_numpy(gradcam_plus_plus(acts, np.zeros_like(grads)))
    np.testing.assert_array_equal(zero, 0.0)  # alpha is 0 where the gradient is 0, not NaN


def test_several_layers_are_normalised_upsampled_summed_and_normalised():
    rng = np.random.default_rng(0)
    a1, g1 = rng.random((2, 8, 8, 3)), rng.normal(size=(2, 8, 8, 3))
    a2, g2 = rng.random((2, 4, 4, 5)), rng.normal(size=(2, 4, 4, 5))

    def norm(m):
        lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
        return (m - lo) / (hi - lo + 1e-8)

    total = 0
    for a, g in ((a1, g1), (a2, g2)):
        cam = (a * np.maximum(g, 0)).sum(-1)
        total = total + tf.image.resize(norm(cam)[..., None], (16, 16)).numpy()[..., 0]
    out = to_numpy(attribution_maps([a1, a2], [g1, g2], (16, 16), method="layercam"))
    np.testing.assert_allclose(out, norm(total), atol=1e-5)


def test_unknown_attribution_method():
    with pytest.raises(ValueError, match="attribution must be one of"):
        attribution_maps(np.ones((1, 2, 2, 1)), np.ones((1, 2, 2, 1)), (2, 2), method="cam")


# ----------------------------------------------------------------------- masks
def test_threshold_mask_takes_the_top_pixels():
    maps = np.arange(20, dtype="float32").reshape(1, 4, 5)[:, ::-1, ::-1].copy()  # peak at (0, 0)
    mask, masked = threshold_masks(maps, 0.25)  # 5 pixels
    expected = maps >= 15
    np.testing.assert_array_equal(to_numpy(mask), expected)
    np.testing.assert_allclose(to_numpy(masked), [0.25])


def test_threshold_mask_breaks_ties_in_raster_order_and_follows_per_sample_areas():
    maps = np.zeros((2, 3, 4), "float32")
    maps[1, 2, 3] = 1.0  # a single peak, the rest tied at 0
    mask, masked = threshold_masks(maps, np.array([0.25, 0.5], "float32"))  # 3 and 6 pixels
    mask = to_numpy(mask)
    np.testing.assert_array_equal(mask[0].ravel(), [1, 1, 1] + [0] * 9)
    np.testing.assert_array_equal(mask[1].ravel(), [1, 1, 1, 1, 1] + [0] * 6 + [1])
    np.testing.assert_allclose(to_numpy(masked), [3 / 12, 6 / 12])


@pytest.mark.parametrize("area", [0.1, 0.23, 0.37, 0.5])
def test_threshold_mask_covers_the_area_and_contains_the_peak(area):
    maps = np.random.default_rng(1).random((6, 13, 17)).astype("float32")
    mask, _ = threshold_masks(maps, area)
    mask = to_numpy(mask)
    counts = mask.sum(axis=(1, 2))
    assert np.all(np.abs(counts - area * 13 * 17) <= 1)
    peaks = maps.reshape(6, -1).argmax(axis=1)
    assert mask.reshape(6, -1)[np.arange(6), peaks].all()


def test_attribution_share_by_hand():
    maps = np.array([[[1.0, 3.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]], "float32")
    mask = np.array([[[True, False], [False, True]], [[True, True], [False, False]]])
    # image 0: (1 + 4) / 8; image 1 has no mass: counts as uniform -> area 0.5
    np.testing.assert_allclose(to_numpy(attribution_share(maps, mask)), [5 / 8, 0.5])


# ---------------------------------------------------------- options in a step
def previewed(images, labels, **options):
    gm = GradMixModel(mnist_cnn(), "conv2", seed=0, **options)
    return gm, gm.preview(images, labels, seed=1)


def test_area_sampling_per_batch_or_per_sample(mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    _, batch = previewed(x, y, mask="threshold")
    _, sample = previewed(x, y, mask="threshold", area_sampling="sample")
    batch_counts = to_numpy(batch.mask).sum(axis=(1, 2))
    sample_counts = to_numpy(sample.mask).sum(axis=(1, 2))
    assert len(set(batch_counts)) == 1
    assert len(set(sample_counts)) > 10
    assert sample_counts.min() >= round(0.1 * 784) - 1 and sample_counts.max() <= round(0.5 * 784) + 1


def test_attribution_label_weights_equal_the_kept_share(mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    _, out = previewed(x, y, fill="mix", label_mode="attribution")
    maps, mask = to_numpy(out.maps, np.float64), to_numpy(out.mask)
    partner = to_numpy(out.partner)
    inside = (maps * mask).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    np.testing.assert_allclose(to_numpy(out.own), 1 - inside, rtol=1e-5)
    pasted = (maps[partner] * mask).sum(axis=(1, 2)) / maps[partner].sum(axis=(1, 2))
    np.testing.assert_allclose(to_numpy(out.pasted), pasted, rtol=1e-5)
    images = to_numpy(out.images)
    np.testing.assert_array_equal(images[mask], x[partner][mask])  # pasted from the partner


def test_area_label_weights_are_the_real_areas(mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    _, out = previewed(x, y, fill="mix")
    area = to_numpy(out.mask).mean(axis=(1, 2))
    np.testing.assert_allclose(to_numpy(out.own), 1 - area, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(out.pasted), area, rtol=1e-6)


def test_probability_masks_a_share_of_the_samples(mnist):
    x, y = mnist[0][:400], mnist[1][:400]
    _, out = previewed(x, y, probability=0.3)
    applied = to_numpy(out.applied)
    assert 0.2 < applied.mean() < 0.4
    mask = to_numpy(out.mask)
    assert mask[applied].any(axis=(1, 2)).all() and not mask[~applied].any()
    np.testing.assert_array_equal(to_numpy(out.images)[~applied], x[~applied])
    np.testing.assert_array_equal(to_numpy(out.own)[~applied], 1.0)


def fit_weights(model_fn, wrap, epochs, x, y, **fit_kwargs):
    model = model_fn()
    trainer = GradMixModel(model, "conv2", seed=0, **wrap) if wrap is not None else model
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    trainer.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, **fit_kwargs)
    return model.get_weights(), trainer


@pytest.mark.parametrize("mode", ["paired", "replace"])
def test_probability_zero_is_exactly_plain_training(mnist, mode):
    x, y = mnist[0][:64], mnist[1][:64]
    plain, _ = fit_weights(sequential_cnn, None, 2, x, y)
    gradmix, _ = fit_weights(sequential_cnn, dict(mode=mode, probability=0.0), 2, x, y)
    for a, b in zip(plain, gradmix):
        np.testing.assert_array_equal(a, b)


def test_warmup_epochs_train_plainly_then_mask_without_retracing(mnist, monkeypatch):
    x, y = mnist[0][:64], mnist[1][:64]
    traces = []
    original = GradMixModel.masked_batch
    monkeypatch.setattr(
        GradMixModel, "masked_batch",
        lambda self, *a, **k: traces.append(1) or original(self, *a, **k),
    )
    plain, _ = fit_weights(sequential_cnn, None, 2, x, y)
    warm, gm = fit_weights(sequential_cnn, dict(warmup_epochs=2), 2, x, y)
    for a, b in zip(plain, warm):
        np.testing.assert_array_equal(a, b)  # epochs 0 and 1: no masking
    if keras.backend.backend() != "torch":  # torch runs eagerly: no tracing
        assert len(traces) == 1  # the step was traced once, the epoch is a variable
    plain3, _ = fit_weights(sequential_cnn, None, 3, x, y)
    gm.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, shuffle=False, verbose=0)
    assert int(gm.epoch.numpy()) == 2
    assert not all(np.allclose(a, b) for a, b in zip(plain3, gm.model.get_weights()))


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision_step_is_finite_and_honours_loss_scaling(mnist, policy):
    x, y = mnist[0][:32], mnist[1][:32]

    def update(options):
        model = mnist_cnn()
        before = [w.numpy().astype("float32") for w in model.trainable_weights]
        gm = GradMixModel(model, ["conv1", "conv2"], seed=0, **options)
        gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
        logs = gm.train_on_batch(x, y, return_dict=True)
        after = [w.numpy().astype("float32") for w in model.trainable_weights]
        return logs["loss"], gm, np.concatenate([(b - a).ravel() for a, b in zip(before, after)])

    loss, gm, delta = update(dict(attribution="layercam", fill="mix"))
    assert gm.model.compute_dtype == policy.split("_")[1]
    if policy == "mixed_float16":
        assert isinstance(gm.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(loss) and np.isfinite(delta).all() and np.abs(delta).max() > 0
    keras.mixed_precision.set_global_policy("float32")
    _, _, delta32 = update(dict(attribution="layercam", fill="mix"))
    # Without loss scaling honoured the float16 update would be 2**15 times smaller.
    ratio = np.linalg.norm(delta) / np.linalg.norm(delta32)
    assert 0.5 < ratio < 2.0, ratio


@pytest.mark.parametrize(
    "options",
    [
        dict(layer=["conv1", "conv2"], attribution="gradcam++", mask="threshold", area_sampling="sample"),
        dict(fill="mix", label_mode="attribution", probability=0.5, warmup_epochs=1),
    ],
)
@xla_only
def test_xla_compiles_the_options(batch, options):
    options = dict(layer="conv2") | options
    gm = GradMixModel(sequential_cnn(bn=True), seed=0, **options)
    gm.compile(optimizer="adam", loss=sparse_ce(), jit_compile=True)
    history = gm.fit(*batch, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_every_option_is_in_the_config():
    options = dict(
        layer=["conv1", "conv2"], attribution="layercam", mode="replace", target="loss",
        normalize="batch", mask="threshold", mask_area=[0.2, 0.3], alpha=2.0, beta=3.0,
        area_sampling="sample", fill="mix", label_mode="attribution", probability=0.7,
        warmup_epochs=3, value_range=[0.0, 255.0], bn_statistics="all", seed=5,
    )
    gm = GradMixModel(sequential_cnn(), **options)
    config = gm.get_config()
    assert {k: config[k] for k in options} == options
    clone = GradMixModel.from_config(config)
    assert {k: clone.get_config()[k] for k in options} == options


@pytest.mark.parametrize(
    "option,value,match",
    [
        ("attribution", "cam", "attribution must be one of"),
        ("mask", "circle", r"mask must be one of \('box', 'threshold'\)"),
        ("area_sampling", "pixel", r"area_sampling must be one of \('batch', 'sample'\)"),
        ("label_mode", "loss", r"label_mode must be one of \('area', 'attribution'\)"),
        ("probability", 1.5, r"probability must be in \[0, 1\]"),
        ("probability", True, r"probability must be in \[0, 1\]"),
        ("warmup_epochs", -1, "warmup_epochs must be an integer >= 0"),
        ("warmup_epochs", 1.5, "warmup_epochs must be an integer >= 0"),
        ("layer", [], "at least one layer"),
        ("layer", ["conv2", "conv9"], "No layer 'conv9'"),
        ("layer", ["conv2", "gap"], "'gap' has output shape"),
    ],
)
def test_bad_option_values(option, value, match):
    kwargs = dict(layer="conv2") | {option: value}
    with pytest.raises(ValueError, match=match):
        GradMixModel(sequential_cnn(), **kwargs)


def test_a_flat_map_leaves_its_image_unmasked():
    gm = GradMixModel(sequential_cnn(), "conv2", fill=0.5, mode="paired", seed=0)
    acts = np.ones((2, 4, 4, 3), "float32")
    grads = np.zeros((2, 4, 4, 3), "float32")
    grads[1, 1, 2, 0] = 1.0  # only image 1 has a positive attribution
    acts[1, 1, 2, 0] = 5.0
    images = np.zeros((2, 8, 8, 1), "float32")
    out = gm.masked_batch(images, [acts], [grads], seed=0)
    np.testing.assert_array_equal(to_numpy(out.applied), [False, True])
    assert not to_numpy(out.mask)[0].any() and to_numpy(out.mask)[1].any()
    np.testing.assert_array_equal(to_numpy(out.images)[0], images[0])
    assert float(to_numpy(out.own)[0]) == 1.0
