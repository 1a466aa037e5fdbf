import keras
import numpy as np
from conftest import to_numpy
import pytest

from keras_gradmix import apply_fill, attribution_share, random_partner
from keras_gradmix.mixing import validate_fill


def box(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[:, rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_noise_fills_only_inside_the_box_shared_across_channels():
    images = np.full((4, 8, 10, 3), -5.0, "float32")  # outside the noise range
    mask = box((4, 8, 10), (2, 6), (3, 9))
    out = to_numpy(apply_fill(images, mask, "noise", value_range=(0.2, 0.7), seed=0))
    np.testing.assert_array_equal(out[~mask], images[~mask])
    inside = out[mask]  # (pixels, channels)
    assert inside.min() >= 0.2 and inside.max() < 0.7
    np.testing.assert_array_equal(inside[:, 0], inside[:, 1])  # one value per pixel
    np.testing.assert_array_equal(inside[:, 0], inside[:, 2])
    assert np.unique(inside[:, 0]).size > 0.9 * inside.shape[0]  # noise, not a constant


def test_constant_fill():
    images = np.random.default_rng(0).random((2, 5, 5, 1)).astype("float32")
    mask = box((2, 5, 5), (0, 2), (1, 4))
    out = to_numpy(apply_fill(images, mask, 0.5))
    np.testing.assert_array_equal(out[mask], 0.5)
    np.testing.assert_array_equal(out[~mask], images[~mask])


def test_mix_pastes_the_partner_box():
    images = np.arange(3, dtype="float32")[:, None, None, None] * np.ones((3, 4, 4, 2), "float32")
    mask = box((3, 4, 4), (1, 3), (1, 3))
    partner = np.array([2, 0, 1])
    out = to_numpy(apply_fill(images, mask, "mix", partner=partner))
    for i, j in enumerate(partner):
        np.testing.assert_array_equal(out[i][mask[i]], j)
        np.testing.assert_array_equal(out[i][~mask[i]], i)


def test_integer_images_become_float():
    images = np.full((1, 4, 4, 1), 200, "uint8")
    out = apply_fill(images, box((1, 4, 4), (0, 2), (0, 2)), 0.0)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_random_partner_is_a_permutation_and_seeded():
    p = to_numpy(random_partner(50, seed=keras.random.SeedGenerator(3)))
    np.testing.assert_array_equal(np.sort(p), np.arange(50))
    q = to_numpy(random_partner(50, seed=keras.random.SeedGenerator(3)))
    np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("bad", ["blur", None, True, [0.5]])
def test_unknown_fill_is_rejected(bad):
    with pytest.raises(ValueError, match="fill must be 'noise', 'mix', 'shuffle' or a number"):
        validate_fill(bad)


def test_mix_without_partner_is_rejected():
    with pytest.raises(ValueError, match="partner"):
        apply_fill(np.zeros((1, 2, 2, 1)), np.ones((1, 2, 2), bool), "mix")


def test_attribution_share_by_hand():
    maps = np.array([[[1.0, 3.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]], "float32")
    mask = np.array([[[True, False], [False, True]], [[True, True], [False, False]]])
    # image 0: (1 + 4) / 8; image 1 has no mass: counts as uniform -> area 0.5
    np.testing.assert_allclose(to_numpy(attribution_share(maps, mask)), [5 / 8, 0.5])


def shuffle_by_hand(images, mask, keys):
    """The masked pixels, in the order of their keys, into the masked places in raster order."""
    out = images.copy()
    for i in range(len(images)):
        places = np.flatnonzero(mask[i].ravel())
        sources = places[np.argsort(keys[i].ravel()[places], kind="stable")]
        flat_in, flat_out = images[i].reshape(-1, images.shape[-1]), out[i].reshape(-1, images.shape[-1])
        flat_out[places] = flat_in[sources]
    return out


@pytest.mark.parametrize("compiled", [False, True])
def test_shuffle_permutes_the_masked_pixels_within_each_image(compiled):
    rng = np.random.default_rng(0)
    images = rng.random((3, 6, 7, 2)).astype("float32")
    mask = rng.random((3, 6, 7)) < 0.3
    mask[2] = False  # an image with nothing masked stays as it was
    keys = rng.random((3, 6, 7, 1)).astype("float32")

    def fill(images, mask, keys):
        return apply_fill(images, mask, "shuffle", noise=keys)

    if compiled:
        from conftest import xla

        fill = xla(fill)
    out = to_numpy(fill(images, mask, keys))
    np.testing.assert_array_equal(out, shuffle_by_hand(images, mask, keys[..., 0]))
    np.testing.assert_array_equal(out[~mask], images[~mask])
    for i in range(3):  # the same pixel values (channel pairs together), another order
        np.testing.assert_array_equal(np.sort(out[i][mask[i]], axis=0), np.sort(images[i][mask[i]], axis=0))
    assert (out[0][mask[0]] != images[0][mask[0]]).any()
