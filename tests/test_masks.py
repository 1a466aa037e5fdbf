import keras
import numpy as np
import pytest
from conftest import xla, to_numpy
from scipy import stats

from keras_gradmix import box_masks, peak_positions, sample_beta, sample_mask_area, threshold_masks
from keras_gradmix.masks import validate_mask_area


def peaked_maps(shape, peaks):
    maps = np.zeros(shape, "float32")
    for i, (r, c) in enumerate(peaks):
        maps[i, r, c] = 1.0
    return maps


def test_box_position_size_clipping_and_real_area():
    # 10 x 12 image, area 0.25 -> sides round(10 * 0.5) = 5 rows, round(12 * 0.5) = 6 cols.
    maps = peaked_maps((3, 10, 12), [(2, 3), (9, 11), (5, 0)])
    mask, masked = box_masks(maps, 0.25, border="clip")
    mask, masked = to_numpy(mask), to_numpy(masked)
    expected = np.zeros((3, 10, 12), bool)
    expected[0, 0:5, 0:6] = True  # rows [2-2, 2+3), cols [3-3, 3+3): fits exactly
    expected[1, 7:10, 8:12] = True  # bottom-right corner: clipped to 3 x 4
    expected[2, 3:8, 0:3] = True  # left border: clipped to 5 x 3
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(masked, [30 / 120, 12 / 120, 15 / 120])
    np.testing.assert_allclose(masked, mask.mean(axis=(1, 2)))


# Peaks in the four corners, on the four edges and inside a 10 x 12 image.
BORDER_PEAKS = [(0, 0), (0, 11), (9, 0), (9, 11), (0, 5), (9, 6), (4, 0), (5, 11), (2, 3)]


def test_shifted_boxes_keep_their_area_and_hold_the_peak():
    maps = peaked_maps((9, 10, 12), BORDER_PEAKS)
    mask, masked = box_masks(maps, 0.25)  # the default: shifted inside the image
    mask, masked = to_numpy(mask), to_numpy(masked)
    # 5 x 6 boxes, rows [cy - 2, cy + 3) and cols [cx - 3, cx + 3) moved inside [0, 10) x [0, 12).
    tops, lefts = [0, 0, 5, 5, 0, 5, 2, 3, 0], [0, 6, 0, 6, 2, 3, 0, 6, 0]
    expected = np.zeros((9, 10, 12), bool)
    for i, (top, left) in enumerate(zip(tops, lefts)):
        expected[i, top:top + 5, left:left + 6] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(masked, 30 / 120)
    np.testing.assert_allclose(mask.mean(axis=(1, 2)), 30 / 120)
    rows, cols = zip(*BORDER_PEAKS)
    assert mask[np.arange(9), rows, cols].all()


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("area", [0.1, 0.3, 0.49])
def test_shifted_boxes_are_the_area_asked_to_the_pixel_grid(area, compiled):
    maps = peaked_maps((9, 10, 12), BORDER_PEAKS)
    fn = lambda m: box_masks(m, area)  # noqa: E731
    mask, masked = (xla(fn) if compiled else fn)(maps)
    side_h, side_w = int(np.floor(10 * np.sqrt(area) + 0.5)), int(np.floor(12 * np.sqrt(area) + 0.5))
    np.testing.assert_array_equal(to_numpy(mask).sum(axis=(1, 2)), side_h * side_w)
    np.testing.assert_allclose(to_numpy(masked), side_h * side_w / 120)
    # Whole pixels: the share is within one row and one column of the area asked.
    assert abs(side_h * side_w / 120 - area) <= (side_h + side_w + 1) / 120


def test_box_border_is_checked():
    with pytest.raises(ValueError, match="border must be one of"):
        box_masks(np.zeros((1, 4, 4), "float32"), 0.25, border="wrap")


def test_box_area_per_sample_and_odd_sides():
    maps = peaked_maps((2, 9, 9), [(4, 4), (4, 4)])
    mask, masked = box_masks(maps, np.array([1 / 9, 0.5], "float32"))
    mask = to_numpy(mask)
    # side round(9 / 3) = 3, rows [4 - 1, 4 + 2); side round(9 * 0.7071) = 6, rows [1, 7).
    assert mask[0, 3:6, 3:6].all() and mask[0].sum() == 9
    assert mask[1, 1:7, 1:7].all() and mask[1].sum() == 36
    np.testing.assert_allclose(to_numpy(masked), [9 / 81, 36 / 81])


def test_peak_ties_take_the_first_in_raster_order():
    maps = np.zeros((2, 4, 4), "float32")
    maps[0, 1, 2] = maps[0, 3, 0] = 1.0
    rows, cols = peak_positions(maps)  # map 1 is flat: first pixel
    np.testing.assert_array_equal(to_numpy(rows), [1, 0])
    np.testing.assert_array_equal(to_numpy(cols), [2, 0])


def test_box_masks_compile_with_xla_and_dynamic_batch():
    fn = xla(lambda m, a: (box_masks(m, a), box_masks(m, a, border="clip")))
    maps = peaked_maps((3, 10, 12), [(2, 3), (9, 11), (5, 0)])
    (_, shifted), (_, clipped) = fn(maps, np.float32(0.25))
    np.testing.assert_allclose(to_numpy(shifted), 30 / 120)
    np.testing.assert_allclose(to_numpy(clipped), [30 / 120, 12 / 120, 15 / 120])


def test_mask_area_follows_the_paper_range():
    area = to_numpy(sample_mask_area((20000,), seed=keras.random.SeedGenerator(0)))
    assert area.min() >= 0.1 and area.max() <= 0.5
    # lam = 1 - area = 0.5 + 0.4 U(0, 1)
    assert stats.kstest(1 - area, stats.uniform(0.5, 0.4).cdf).pvalue > 1e-3


@pytest.mark.parametrize("alpha,beta", [(2.0, 0.5), (0.5, 0.5), (1.0, 3.0), (5.0, 5.0)])
def test_beta_sampler_distribution(alpha, beta):
    u = to_numpy(sample_beta((20000,), alpha, beta, seed=keras.random.SeedGenerator(1)))
    assert np.all((u >= 0) & (u <= 1)) and np.isfinite(u).all()
    assert stats.kstest(u, stats.beta(alpha, beta).cdf).pvalue > 1e-3


def test_int_seed_gives_independent_draws_and_repeats():
    u = to_numpy(sample_beta((20000,), 2.0, 2.0, seed=5))
    assert stats.kstest(u, stats.beta(2.0, 2.0).cdf).pvalue > 1e-3  # not x == y -> 0.5
    np.testing.assert_array_equal(u, to_numpy(sample_beta((20000,), 2.0, 2.0, seed=5)))


def test_beta_sampler_compiles_with_xla():
    @xla
    def draw():
        return sample_mask_area((5000,), (0.2, 0.4), alpha=2.0, beta=3.0, seed=3)

    area = to_numpy(draw())
    assert area.min() >= 0.2 and area.max() <= 0.4
    u = (0.4 - area) / 0.2
    assert stats.kstest(u, stats.beta(2.0, 3.0).cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    "bad", [(0.0, 0.5), (0.1, 1.0), (0.6, 0.4), (-0.1, 0.2), 0.3, "big", (0.1, 0.2, 0.3)]
)
def test_mask_area_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="mask_area"):
        validate_mask_area(bad)


def test_fixed_area_is_allowed():
    assert validate_mask_area((0.25, 0.25)) == (0.25, 0.25)
    area = to_numpy(sample_mask_area((4,), (0.25, 0.25), seed=0))
    np.testing.assert_allclose(area, 0.25)


def test_beta_parameters_must_be_positive():
    with pytest.raises(ValueError, match="alpha and beta must be > 0"):
        sample_beta((2,), 0.0, 1.0)


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
