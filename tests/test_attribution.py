import numpy as np
from conftest import to_numpy
import pytest
import tensorflow as tf

from keras_gradmix import (
    maps_from_gradients,
    gradcam,
    gradcam_plus_plus,
    layercam,
    normalize_maps,
    resize_maps,
    target_scores,
)


def test_gradcam_on_hand_built_tensors():
    # 1 image, 2x2 map, 2 channels.
    acts = np.array([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 1.0]]]])
    grads = np.zeros_like(acts)
    grads[..., 0] = 0.5  # channel weight 0.5
    grads[..., 1] = np.array([[-1.0, -1.0], [-1.0, -3.0]])  # channel weight -1.5
    cam = to_numpy(gradcam(acts, grads))
    # 0.5 * A0 - 1.5 * A1, then ReLU.
    expected = np.maximum(0.5 * acts[0, ..., 0] - 1.5 * acts[0, ..., 1], 0)
    np.testing.assert_allclose(cam[0], expected)
    np.testing.assert_allclose(cam[0], [[0.0, 0.0], [1.5, 0.0]])
    assert cam.dtype == np.float32


def test_gradcam_computes_in_float32_from_float16():
    acts = np.full((1, 2, 2, 1), 300.0, np.float16)
    grads = np.full((1, 2, 2, 1), 300.0, np.float16)  # product overflows float16
    cam = to_numpy(gradcam(acts, grads))
    assert cam.dtype == np.float32
    np.testing.assert_allclose(cam, 90000.0)


def test_normalize_per_image_and_per_batch():
    maps = np.array([[[0.0, 2.0], [1.0, 4.0]], [[10.0, 10.0], [10.0, 12.0]]])
    per_image = to_numpy(normalize_maps(maps, "image"))
    np.testing.assert_allclose(per_image[0], [[0, 0.5], [0.25, 1]], atol=1e-6)
    np.testing.assert_allclose(per_image[1], [[0, 0], [0, 1]], atol=1e-6)
    per_batch = to_numpy(normalize_maps(maps, "batch"))
    np.testing.assert_allclose(per_batch, maps / 12.0, atol=1e-6)


def test_constant_map_normalises_to_zero_not_nan():
    out = to_numpy(normalize_maps(np.full((2, 3, 3), 7.0)))
    np.testing.assert_array_equal(out, 0.0)


def test_resize_is_bilinear_half_pixel():
    maps = np.array([[[0.0, 1.0]]])  # 1x2 -> 1x4
    out = to_numpy(resize_maps(maps, (1, 4)))
    # Half-pixel centres: output x -> input (x + 0.5) / 2 - 0.5, clamped.
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 0.75, 1.0])
    same = to_numpy(resize_maps(maps, (1, 2)))
    np.testing.assert_array_equal(same, maps)


def test_maps_from_gradients_match_reference_pipeline():
    rng = np.random.default_rng(1)
    acts = rng.random((3, 7, 5, 4)).astype("float32")
    grads = rng.normal(size=(3, 7, 5, 4)).astype("float32")
    out = to_numpy(maps_from_gradients(acts, grads, (14, 10), method="gradcam"))
    cam = np.maximum(np.einsum("bhwc,bc->bhw", acts, grads.mean(axis=(1, 2))), 0)
    up = tf.image.resize(cam[..., None], (14, 10), method="bilinear").numpy()[..., 0]
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, (up - lo) / (hi - lo + 1e-8), atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_target_scores_label_and_prediction():
    y_pred = np.array([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]], "float32")
    y_true = np.array([[0, 0, 1], [0, 1, 0]], "float32")
    np.testing.assert_allclose(target_scores(y_true, y_pred, "label"), [2.0, 0.0])
    np.testing.assert_allclose(target_scores(y_true, y_pred, "prediction"), [3.0, 5.0])
    with pytest.raises(ValueError, match="target"):
        target_scores(y_true, y_pred, "loss")


def test_normalize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_maps(np.zeros((1, 2, 2)), "global")


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
    out = to_numpy(maps_from_gradients([a1, a2], [g1, g2], (16, 16), method="layercam"))
    np.testing.assert_allclose(out, norm(total), atol=1e-5)


def test_unknown_attribution_method():
    with pytest.raises(ValueError, match="attribution must be one of"):
        maps_from_gradients(np.ones((1, 2, 2, 1)), np.ones((1, 2, 2, 1)), (2, 2), method="cam")
