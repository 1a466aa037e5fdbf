"""Paying only for the masking used: partial masked batches, schedules, mixing
policies in the step, and what happened in the logs."""

import keras
import numpy as np
import pytest
from conftest import sequential_cnn, sparse_ce, to_numpy

from keras_gradmix import (
    GradMixConfig,
    GradMixModel,
    Transformation,
    apply_transformation,
    sample_transformation,
)
from keras_gradmix.transform import schedule, transformed_count

FIXED = dict(mask_area=(0.25, 0.25), fill=0.5)


def cross_entropy(logits, labels):
    """Per-sample softmax cross-entropy, in NumPy."""
    logits = np.asarray(logits, "float64")
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_z - logits[np.arange(len(labels)), labels]


def compiled(model=None, **options):
    gm = GradMixModel(model or sequential_cnn(), "conv2", seed=0, **options)
    gm.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    return gm


def step_terms(gm, x, y, masked):
    """The step's loss terms for one previewed transformation."""
    y_pred = gm.model(x, training=False)
    clean = gm.clean_loss(x, y, y_pred, None)
    y_masked = gm.model(masked.images, training=False)
    return to_numpy(y_masked), {k: float(to_numpy(v)) for k, v in
                                gm.gradmix_terms(x, y, y_pred, clean, y_masked, None, masked).items()}


# ----------------------------------------------------------- partial batches
def test_masked_fraction_draws_a_static_share_of_distinct_images():
    assert [transformed_count(GradMixConfig(masked_fraction=f), 10) for f in (0.25, 0.5, 1.0)] == [3, 5, 10]
    assert int(to_numpy(transformed_count(GradMixConfig(masked_fraction=0.25), keras.ops.convert_to_tensor(10)))) == 3
    t = sample_transformation(GradMixConfig(masked_fraction=0.25), 16, (8, 8), seed=0)
    index = to_numpy(t.index)
    assert index.shape == (4,) and len(set(index)) == 4 and set(index) <= set(range(16))
    assert to_numpy(t.area).shape == (4,) and to_numpy(t.noise).shape == (4, 8, 8, 1)
    assert sample_transformation(GradMixConfig(), 16, (8, 8), seed=0).index is None


def test_each_image_is_chosen_with_probability_f_so_the_expected_loss_matches():
    """E[f/k sum_{i in S} l_i] = f mean(l): masking each image with probability f."""
    options, f = GradMixConfig(masked_fraction=0.25), 0.25
    losses = np.arange(16, dtype="float64")
    gen = keras.random.SeedGenerator(0)
    draws = np.stack([to_numpy(sample_transformation(options, 16, (4, 4), seed=gen).index)
                      for _ in range(400)])
    counts = np.bincount(draws.ravel(), minlength=16) / len(draws)
    np.testing.assert_allclose(counts, f, atol=0.08)
    partial = (f / 4 * losses[draws].sum(axis=1)).mean()
    assert partial == pytest.approx(f * losses.mean(), abs=0.1)  # 1.875; draw std 0.025


def test_the_partial_term_is_f_times_the_mean_over_the_chosen_images(mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    gm = compiled(masked_fraction=0.5, **FIXED)
    masked = gm.preview(x, y, seed=1)
    index, own = to_numpy(masked.index), to_numpy(masked.own)
    assert to_numpy(masked.images).shape == (8, 28, 28, 1) and len(set(index)) == 8
    assert to_numpy(masked.applied).all() and np.allclose(own, 1 - to_numpy(masked.area))
    y_masked, terms = step_terms(gm, x, y, masked)
    expected = 0.5 * np.sum(own * cross_entropy(y_masked, y[index])) / 8
    assert terms["masked"] == pytest.approx(expected, rel=1e-5)
    kept = ~to_numpy(masked.mask)  # outside the masks: the chosen images, in index order
    np.testing.assert_array_equal(to_numpy(masked.images)[..., 0][kept], x[index, ..., 0][kept])


@pytest.mark.parametrize("jit", [False, True])
def test_partial_batches_schedules_and_policies_train_and_compile(mnist, jit):
    if jit and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True means torch.compile, refused for GradMix")
    x, y = mnist[0][:64], mnist[1][:64]
    gm = GradMixModel(sequential_cnn(bn=True), "conv2", seed=0, masked_fraction=0.5,
                      area_ramp_epochs=2, probability_ramp_epochs=2, stop_epoch=2,
                      policy={"gradmix": 0.5, "cutmix": 0.25, "mixup": 0.25})
    gm.compile(optimizer="adam", loss=sparse_ce(), jit_compile=jit)
    history = gm.fit(x, y, batch_size=16, epochs=3, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["gradmix_masked"][2] == 0.0  # stopped
    assert 0 < history["gradmix_masked"][1] <= 0.5  # at most the half forwarded


# ----------------------------------------------------------------- schedules
def test_the_schedule_is_exact_at_every_epoch():
    options = GradMixConfig(warmup_epochs=1, stop_epoch=4, area_ramp_epochs=2, probability_ramp_epochs=4)
    rows = [tuple(float(to_numpy(v)) for v in schedule(options, e)) for e in range(6)]
    assert [r[0] for r in rows] == [0, 1, 1, 1, 0, 0]  # on after the warm-up, off from stop_epoch
    assert [r[1] for r in rows] == [0, 0.5, 1, 1, 1, 1]  # area ramp over 2 epochs after warm-up
    assert [r[2] for r in rows] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert schedule(options, None) == (True, 1.0, 1.0)
    t = sample_transformation(GradMixConfig(mask_area=(0.2, 0.2), area_ramp_epochs=4), 4, (8, 8), seed=0, epoch=1)
    np.testing.assert_allclose(to_numpy(t.area), 0.1)


def test_schedules_run_in_fit_through_the_epoch_variable_without_retracing(mnist, monkeypatch):
    x, y = mnist[0][:64], mnist[1][:64]
    traces = []
    original = GradMixModel.masked_batch
    monkeypatch.setattr(GradMixModel, "masked_batch",
                        lambda self, *a, **k: traces.append(1) or original(self, *a, **k))
    gm = compiled(warmup_epochs=1, stop_epoch=3, area_ramp_epochs=2, mask_area=(0.25, 0.25))
    history = gm.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0).history
    masked, flat, area = (np.array(history[k]) for k in ("gradmix_masked", "gradmix_flat", "gradmix_area"))
    np.testing.assert_array_equal(masked[[0, 3]], 0.0)  # warm-up, then stopped
    np.testing.assert_allclose(masked[1:3] + flat[1:3], 1.0)  # every image drawn
    np.testing.assert_array_equal(area[[0, 3]], 0.0)
    # Boxes of 0.125 then 0.25 of the image: 10x10 and 14x14 px, wherever they land.
    np.testing.assert_allclose(area[1:3], [100 / 784, 196 / 784], rtol=1e-6)
    if keras.backend.backend() != "torch":  # torch runs eagerly: no tracing
        assert len(traces) == 1
    ramped = compiled(probability_ramp_epochs=2)
    history = ramped.fit(mnist[0][:256], mnist[1][:256], batch_size=32, epochs=2, verbose=0).history
    drawn = np.array(history["gradmix_masked"]) + np.array(history["gradmix_flat"])
    assert 0.35 < drawn[0] < 0.65 and drawn[1] == pytest.approx(1.0)


# ------------------------------------------------------------------ policies
def one_hot(y, classes=10):
    return np.eye(classes, dtype="float32")[y]


@pytest.mark.parametrize("method", ["cutmix", "mixup"])
def test_policy_images_and_labels_match_keras_layers_on_the_same_draw(mnist, method):
    """Keras' CutMix/MixUp, given our partner and box/weight, make the same
    images, and the step's loss is the cross-entropy of their mixed labels."""
    x, y = mnist[0][:16], mnist[1][:16]
    gm = compiled(policy={method: 1.0})
    masked = gm.preview(x, y, seed=3)
    partner, own, pasted = (to_numpy(v) for v in (masked.partner, masked.own, masked.pasted))
    np.testing.assert_allclose(own + pasted, 1.0, rtol=1e-6)
    if method == "cutmix":
        mask = to_numpy(masked.mask)
        np.testing.assert_allclose(pasted, mask.mean(axis=(1, 2)), rtol=1e-6)  # real box areas
        layer = keras.layers.CutMix()
        draw = {"permutation_order": partner, "batch_masks": mask[..., None], "mix_weight": own}
        assert 0.1 < pasted.mean() < 0.9  # 1 - lam, lam ~ Beta(1, 1), clipped boxes
    else:
        layer = keras.layers.MixUp()
        draw = {"permutation_order": partner, "mix_weight": own}
        assert to_numpy(masked.mask).sum() == 0
    np.testing.assert_allclose(to_numpy(layer.transform_images(x, draw)), to_numpy(masked.images),
                               rtol=1e-6, atol=1e-6)
    labels = to_numpy(layer.transform_labels(one_hot(y), draw))
    y_masked, terms = step_terms(gm, x, y, masked)
    log_p = y_masked - np.log(np.exp(y_masked - y_masked.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - y_masked.max(1, keepdims=True)
    expected = -(labels * log_p).sum(axis=1).mean()
    assert terms["masked"] + terms["partner"] == pytest.approx(expected, rel=1e-5)


def test_the_policy_picks_one_method_per_batch_at_its_rates():
    options = GradMixConfig(policy={"gradmix": 0.5, "cutmix": 0.25, "mixup": 0.25})
    gen = keras.random.SeedGenerator(0)
    methods = [int(to_numpy(sample_transformation(options, 4, (8, 8), seed=gen).method)) for _ in range(400)]
    rates = np.bincount(methods, minlength=3) / 400
    np.testing.assert_allclose(rates, [0.5, 0.25, 0.25], atol=0.07)
    # The chosen method's batch is exactly what that method alone makes.
    rng = np.random.default_rng(0)
    images, maps = rng.random((4, 8, 8, 1), "float32"), rng.random((4, 8, 8), "float32")
    t = sample_transformation(options, 4, (8, 8), seed=5)
    for i, name in enumerate(("gradmix", "cutmix", "mixup")):
        both = apply_transformation(images, maps, t._replace(method=np.int32(i)), options)
        alone = apply_transformation(images, maps, t._replace(method=np.int32(0)),
                                     options.replace(policy={name: 1.0}))
        for a, b in zip(both, alone):
            if a is not None:
                np.testing.assert_allclose(to_numpy(a), to_numpy(b))


def test_cutmix_boxes_are_clipped_at_the_border():
    t = Transformation(area=np.ones(2, "float32"), sampled=np.array([True, False]),
                       partner=np.array([1, 0]), noise=None, method=np.int32(1),
                       lam=np.array([0.75, 0.75], "float32"),
                       centre=(np.array([0, 4], "int32"), np.array([0, 4], "int32")))
    images = np.stack([np.zeros((8, 8, 1), "float32"), np.ones((8, 8, 1), "float32")])
    out = apply_transformation(images, np.zeros((2, 8, 8), "float32"), t, GradMixConfig(policy={"cutmix": 1}))
    # A 4x4 box (area 0.25) centred at the corner keeps its 2x2 inside: 4/64 pasted.
    assert to_numpy(out.images)[0].sum() == 4 and to_numpy(out.mask)[0, :2, :2].all()
    np.testing.assert_allclose(to_numpy(out.pasted), [4 / 64, 0.0])
    np.testing.assert_allclose(to_numpy(out.own), [60 / 64, 1.0])  # image 1 was not drawn


# ------------------------------------------------------------------- the logs
def test_masking_metrics_are_in_history_not_in_evaluate(mnist):
    x, y = mnist[0][:64], mnist[1][:64]
    gm = compiled(probability=0.5, **FIXED)
    history = gm.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert 0 < history["gradmix_masked"][0] < 1 and history["gradmix_area"][0] == pytest.approx(0.25)
    assert "gradmix_masked" not in gm.evaluate(x, y, verbose=0, return_dict=True)
