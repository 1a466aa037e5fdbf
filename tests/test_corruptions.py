"""Corruptions: range, shape, determinism, exact values where they exist, and
distortion that grows with severity on real digits."""

import keras
import numpy as np
import pytest
from conftest import backend_free, to_numpy

from keras_gradmix.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    SEVERITY_PARAMETERS,
    corrupt,
    corrupt_dataset,
    disk_kernel,
    gaussian_kernel,
)
from keras_gradmix.robustness import evaluate_corruptions

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise")


def psnr(corrupted, clean) -> float:
    """Mean PSNR (dB) over the images, peak 1."""
    mse = np.mean((np.asarray(corrupted) - clean) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(1 / np.maximum(mse, 1e-12))))


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist[0][:64]


@pytest.fixture(scope="module")
def colour(digits):
    return np.concatenate([digits, 0.5 * digits + 0.25, 1 - digits], axis=-1)  # 3 channels


@backend_free  # TensorFlow ops whatever the Keras backend
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_distortion_grows_with_severity_and_values_stay_in_range(name, digits, colour):
    assert len(SEVERITY_PARAMETERS[name]) == 5
    for clean in (digits, colour):
        outs = [np.asarray(corrupt(clean, name, s, seed=0)) for s in SEVERITIES]
        for out in outs:
            assert out.shape == clean.shape and out.dtype == np.float32
            assert out.min() >= 0.0 and out.max() <= 1.0
        ratios = [psnr(out, clean) for out in outs]
        assert all(a > b for a, b in zip(ratios, ratios[1:])), (name, ratios)
        assert ratios[-1] < 30.0  # severity 5 visibly distorts


@backend_free  # TensorFlow ops whatever the Keras backend
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_given_the_seed_and_single_images_match_batches(name, digits):
    a = np.asarray(corrupt(digits, name, 3, seed=7))
    np.testing.assert_array_equal(a, np.asarray(corrupt(digits, name, 3, seed=7)))
    other = np.asarray(corrupt(digits, name, 3, seed=8))
    assert (not np.array_equal(a, other)) == (name in RANDOM)
    single = np.asarray(corrupt(digits[0], name, 3, seed=7))
    assert single.shape == digits[0].shape
    if name not in RANDOM:  # noise draws depend on the batch shape
        np.testing.assert_allclose(single, a[0], atol=1e-6)


@backend_free  # TensorFlow ops whatever the Keras backend
def test_exact_values():
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, :2] = 1.0  # mean 0.5
    np.testing.assert_allclose(corrupt(x, "contrast", 2), 0.5 + (x - 0.5) * 0.5)
    two = np.concatenate([x, 0.2 * x], axis=-1)  # channel means 0.5 and 0.1
    np.testing.assert_allclose(corrupt(np.pad(two, [(0, 0)] * 3 + [(0, 1)]), "contrast", 2)[..., :2],
                               np.array([0.5, 0.1]) + (two - np.array([0.5, 0.1])) * 0.5, atol=1e-6)
    np.testing.assert_allclose(corrupt(x * 0.5, "brightness", 5), x * 0.5 + 0.3)
    np.testing.assert_allclose(corrupt(x, "brightness", 5), np.minimum(x + 0.3, 1.0))
    rgb = np.array([[[[0.2, 0.4, 0.6]]]], np.float32)  # HSV value 0.6 -> 0.9: scaled by 1.5
    np.testing.assert_allclose(corrupt(rgb, "brightness", 5), rgb * 1.5, atol=1e-6)
    flat = np.full((2, 28, 28, 3), 0.3, np.float32)
    for name in ("gaussian_blur", "defocus_blur", "zoom_blur", "pixelate", "contrast"):
        for severity in SEVERITIES:
            np.testing.assert_allclose(corrupt(flat, name, severity), flat, atol=1e-5)
    # JPEG keeps a flat image flat, up to 8-bit quantisation and the YCbCr round trip.
    jpeg = np.asarray(corrupt(flat, "jpeg_compression", 5))
    assert np.ptp(jpeg) == 0 and abs(jpeg.max() - 0.3) <= 2 / 255


@backend_free  # TensorFlow ops whatever the Keras backend
def test_blur_kernels():
    for sigma in SEVERITY_PARAMETERS["gaussian_blur"]:
        kernel = gaussian_kernel(sigma)
        assert kernel.sum() == pytest.approx(1.0) and np.allclose(kernel, kernel.T)
        radius = kernel.shape[0] // 2
        assert radius == max(1, int(4 * sigma + 0.5))
        assert kernel[radius, radius + 1] / kernel[radius, radius] == pytest.approx(
            np.exp(-0.5 / sigma**2))
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.4**2))
    taps /= taps.sum()
    np.testing.assert_allclose(disk_kernel(0.3, 0.4), np.outer(taps, taps))  # a 1-pixel disk
    plus = np.zeros((3, 3))
    plus[1, :] = plus[:, 1] = 0.2  # radius 1: the centre and its 4 neighbours
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.2**2))
    taps /= taps.sum()
    padded = np.pad(plus, 2)  # full 2-D convolution with the 3x3 Gaussian: 5x5
    expected = np.array([[np.sum(padded[i:i + 3, j:j + 3] * np.outer(taps, taps)[::-1, ::-1])
                          for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(disk_kernel(1.0, 0.2), expected, atol=1e-12)
    for radius, alias in SEVERITY_PARAMETERS["defocus_blur"]:
        assert disk_kernel(radius, alias).sum() == pytest.approx(1.0)


@backend_free  # TensorFlow ops whatever the Keras backend
def test_noise_statistics():
    grey = np.full((64, 28, 28, 1), 0.5, np.float32)

    def close(share, p):  # within 4 binomial standard deviations
        return abs(share - p) < 4 * np.sqrt(p * (1 - p) / grey.size)

    for severity, std in zip(SEVERITIES, SEVERITY_PARAMETERS["gaussian_noise"]):
        noise = np.asarray(corrupt(grey, "gaussian_noise", severity, seed=1)) - 0.5
        assert noise.std() == pytest.approx(std, rel=0.03) and abs(noise.mean()) < 0.01
    for severity, photons in zip(SEVERITIES, SEVERITY_PARAMETERS["shot_noise"]):
        out = np.asarray(corrupt(grey, "shot_noise", severity, seed=1))
        assert out.mean() == pytest.approx(0.5, abs=0.01)
        assert out.var() == pytest.approx(0.5 / photons, rel=0.05)  # Poisson(c x) / c
        assert np.allclose(out * photons, np.round(out * photons), atol=1e-4)
    for severity, amount in zip(SEVERITIES, SEVERITY_PARAMETERS["impulse_noise"]):
        out = np.asarray(corrupt(grey, "impulse_noise", severity, seed=1))
        assert set(np.unique(out)) <= {0.0, 0.5, 1.0}
        assert close(np.mean(out != 0.5), amount) and close(np.mean(out == 1.0), amount / 2)


@backend_free  # TensorFlow ops whatever the Keras backend
def test_corrupt_dataset_uses_seed_and_element_index(digits):
    import tensorflow as tf

    labels = np.arange(len(digits))
    ds = tf.data.Dataset.from_tensor_slices((digits, labels)).batch(16)
    out = corrupt_dataset(ds, "impulse_noise", 4, seed=5)
    batches = list(out.as_numpy_iterator())
    for i, (x, y) in enumerate(batches):
        np.testing.assert_array_equal(y, labels[16 * i:16 * i + 16])
        np.testing.assert_array_equal(x, corrupt(digits[16 * i:16 * i + 16], "impulse_noise", 4,
                                                 (5, i)))
    again = list(out.as_numpy_iterator())
    np.testing.assert_array_equal(batches[2][0], again[2][0])
    images_only = corrupt_dataset(tf.data.Dataset.from_tensor_slices(digits).batch(16),
                                  "contrast", 1)
    np.testing.assert_allclose(next(iter(images_only)), corrupt(digits[:16], "contrast", 1))


@backend_free  # TensorFlow ops whatever the Keras backend
def test_bad_input_is_named(digits):
    with pytest.raises(ValueError, match="Unknown corruption 'fog'"):
        corrupt(digits, "fog", 1)
    for severity in (0, 6):
        with pytest.raises(ValueError, match=r"severity must be one of \(1, 2, 3, 4, 5\)"):
            corrupt(digits, "contrast", severity)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(digits[0, :, :, 0], "contrast", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(np.zeros((2, 8, 8, 2), np.float32), "contrast", 1)


def small_classifier():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((28, 28, 1)),
                             keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])


def test_evaluate_corruptions_equals_a_batch_by_batch_computation(mnist):
    """Runs on every backend: NumPy between the TF corruptions and the model."""
    x, y = mnist[0][:100], mnist[1][:100]
    model = small_classifier()
    names, severities = ("gaussian_noise", "pixelate"), (2, 5)
    result = evaluate_corruptions(model, (x, y), names, severities, seed=3, batch_size=32)

    def accuracy(images):
        return np.mean(to_numpy(model(images)).argmax(1) == y)

    assert result["clean"] == pytest.approx(accuracy(x))
    for name in names:
        for severity in severities:
            expected = np.concatenate([np.asarray(corrupt(x[i:i + 32], name, severity, (3, i // 32)))
                                       for i in range(0, 100, 32)])
            assert result["accuracy"][name][severity] == pytest.approx(accuracy(expected))
    assert result["mean"] == pytest.approx(np.mean(
        [a for by_severity in result["accuracy"].values() for a in by_severity.values()]))
    one_hot = evaluate_corruptions(model, (x, np.eye(10)[y]), names, severities, seed=3,
                                   batch_size=32)
    assert one_hot == result
    single = evaluate_corruptions(model, (x, y), "pixelate", 5, seed=3, batch_size=32)
    assert single["accuracy"] == {"pixelate": {5: result["accuracy"]["pixelate"][5]}}


def test_evaluate_corruptions_rejects_bad_input(mnist):
    model = small_classifier()
    x = mnist[0][:8]
    with pytest.raises(ValueError, match="needs labelled data"):
        evaluate_corruptions(model, x)
    with pytest.raises(ValueError, match="Unknown corruption"):
        evaluate_corruptions(model, (x, mnist[1][:8]), ["snow"])
    with pytest.raises(ValueError, match="at least one corruption and one severity"):
        evaluate_corruptions(model, (x, mnist[1][:8]), severities=())


def test_module_docstring_example_runs():
    import re

    import keras_gradmix.corruptions as module

    namespace = {}
    exec(re.search(r"```python\n(.*?)```", module.__doc__, re.S).group(1), namespace)
    assert namespace["noisy"].shape == (8, 28, 28, 1)
