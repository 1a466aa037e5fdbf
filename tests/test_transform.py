"""The transformation: sampled once per batch, then applied as a pure function."""

import keras
import numpy as np
import pytest
from conftest import mnist_cnn, sequential_cnn, to_numpy

from keras_gradmix import (
    GradMixConfig,
    GradMixModel,
    Transformation,
    apply_transformation,
    sample_transformation,
)


def test_apply_is_a_pure_function_of_images_maps_and_the_draw():
    maps = np.zeros((3, 4, 6), "float32")
    maps[0, 1, 1] = maps[1, 3, 5] = 1.0  # image 2 has a flat map
    images = np.arange(3 * 4 * 6 * 2, dtype="float32").reshape(3, 4, 6, 2)
    noise = np.full((3, 4, 6, 1), -1.0, "float32")
    t = Transformation(area=np.array([0.25, 0.25, 0.25], "float32"),
                       sampled=np.array([True, False, True]), partner=None, noise=noise)
    options = GradMixConfig()
    out = apply_transformation(images, maps, t, options)
    again = apply_transformation(images, maps, t, options)
    np.testing.assert_array_equal(to_numpy(out.images), to_numpy(again.images))
    # Image 0: box of round(4 * .5) = 2 rows x round(6 * .5) = 3 cols at rows [0, 2), cols [0, 3).
    expected = images.copy()
    expected[0, 0:2, 0:3] = -1.0
    np.testing.assert_array_equal(to_numpy(out.images), expected)  # 1 not drawn, 2 flat
    np.testing.assert_array_equal(to_numpy(out.applied), [True, False, False])
    np.testing.assert_allclose(to_numpy(out.own), [1 - 6 / 24, 1.0, 1.0])


def test_an_int_seed_gives_independent_draws():
    """One int seed used to feed every draw: the masked samples were the first
    partners, and the masked images' areas came from the same uniforms."""
    options = GradMixConfig(probability=0.5, area_sampling="sample", fill="mix")
    t = sample_transformation(options, 512, (8, 8), seed=7)
    sampled, partner, area = (to_numpy(v) for v in (t.sampled, t.partner, t.area))
    k = int(sampled.sum())
    assert 200 < k < 312
    assert len(set(partner[:k]) & set(np.flatnonzero(sampled))) < 0.7 * k
    masked_areas = area[sampled]
    assert masked_areas.min() < 0.15 and masked_areas.max() > 0.45  # covers [0.1, 0.5]
    # The same through GradMixModel.masked_batch(..., seed=int).
    gm = GradMixModel(sequential_cnn(), "conv2", **options.get_config())
    rng = np.random.default_rng(0)
    acts, grads = rng.random((512, 4, 4, 2)), rng.random((512, 4, 4, 2))
    out = gm.masked_batch(np.zeros((512, 8, 8, 1), "float32"), [acts], [grads], seed=7)
    applied, partner = to_numpy(out.applied), to_numpy(out.partner)
    k = int(applied.sum())
    assert len(set(partner[:k]) & set(np.flatnonzero(applied))) < 0.7 * k


def test_a_seed_generator_advances_and_an_int_repeats():
    options = GradMixConfig(area_sampling="sample")
    gen = keras.random.SeedGenerator(3)
    first = to_numpy(sample_transformation(options, 16, (8, 8), seed=gen).area)
    second = to_numpy(sample_transformation(options, 16, (8, 8), seed=gen).area)
    assert not np.allclose(first, second)
    a = to_numpy(sample_transformation(options, 16, (8, 8), seed=5).noise)
    b = to_numpy(sample_transformation(options, 16, (8, 8), seed=5).noise)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("epoch,masked", [(0, False), (1, False), (2, True), (None, True)])
def test_warm_up_is_part_of_the_draw(epoch, masked):
    t = sample_transformation(GradMixConfig(warmup_epochs=2), 4, (8, 8), seed=0, epoch=epoch)
    np.testing.assert_array_equal(to_numpy(t.sampled), [masked] * 4)


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


def test_noise_is_drawn_in_raw_pixels_then_standardised():
    raw = GradMixConfig(value_range=(0, 255))
    standardised = raw.replace(normalization=((100.0, 120.0, 140.0), (50.0, 60.0, 70.0)))
    u = to_numpy(sample_transformation(raw, 4, (8, 8), seed=3).noise)  # (4, 8, 8, 1)
    out = to_numpy(sample_transformation(standardised, 4, (8, 8), seed=3).noise)
    assert u.shape == (4, 8, 8, 1) and out.shape == (4, 8, 8, 3)
    assert 0 <= u.min() and u.max() <= 255
    expected = (u - np.array([100.0, 120.0, 140.0])) / np.array([50.0, 60.0, 70.0])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_non_finite_maps_never_make_nan_masks():
    gm = GradMixModel(sequential_cnn(), "conv2", fill="mix", label_mode="attribution", seed=0)
    rng = np.random.default_rng(0)
    acts = rng.random((3, 4, 4, 2)).astype("float32")
    grads = rng.random((3, 4, 4, 2)).astype("float32")
    grads[0, 1, 1, 0] = np.inf  # e.g. a float16 overflow
    grads[1, 2, 3, 1] = np.nan
    images = rng.random((3, 8, 8, 1)).astype("float32")
    for normalize in ("image", "batch"):
        gm.options = gm.options.replace(normalize=normalize)
        out = gm.masked_batch(images, [acts], [grads], seed=0)
        np.testing.assert_array_equal(to_numpy(out.applied), [False, False, True])
        for value in (out.maps, out.own, out.pasted, out.images):
            assert np.isfinite(to_numpy(value)).all()
        np.testing.assert_array_equal(to_numpy(out.images)[:2], images[:2])
        assert to_numpy(out.mask)[2].any() and not to_numpy(out.mask)[:2].any()
