"""Common image corruptions in the style of CIFAR-10-C (Hendrycks & Dietterich 2019).

TensorFlow ops, so they run inside ``tf.data`` (:func:`corrupt_dataset`) as well
as eagerly (:func:`corrupt`). Images are float in [0, 1], channels last,
``(H, W, C)`` or ``(B, H, W, C)`` with 1 or 3 channels; outputs have the same
shape, float32, clipped to [0, 1]. Random corruptions use stateless ops: the
same ``seed`` gives the same images.

Severity parameters (severity 1 to 5) are those of CIFAR-10-C's generator
(``make_cifar_c.py``, for 32x32 images), used unchanged for other sizes:

==================  ==============================================================
corruption          parameter per severity 1..5
==================  ==============================================================
gaussian_noise      std of additive N(0, s²): .04 .06 .08 .09 .10
shot_noise          Poisson photons per unit intensity c, x ← Poisson(c·x)/c: 500 250 100 75 50
impulse_noise       share of values set to 0 or 1 (salt & pepper, half each): .01 .02 .03 .05 .07
gaussian_blur       Gaussian sigma in pixels: .4 .6 .7 .8 1
defocus_blur        disk radius, anti-alias sigma: (.3, .4) (.4, .5) (.5, .6) (1, .2) (1.5, .1)
zoom_blur           mean of the image zoomed by 1, 1.01, ..., up to 1.05 1.10 1.15 1.20 1.25
contrast            x ← (x − mean)·c + mean, per channel: .75 .5 .4 .3 .15
brightness          added to HSV value (grey: to the pixel): .05 .1 .15 .2 .3
pixelate            area down-sampling to this share of the size, nearest up: .95 .9 .85 .75 .65
jpeg_compression    JPEG quality: 80 65 58 50 40
==================  ==============================================================

Blurs pad by reflection (as OpenCV's default border).

Examples:

```python
import numpy as np
from keras_gradmix.corruptions import corrupt
x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
noisy = corrupt(x, "gaussian_noise", severity=3, seed=0)   # (8, 28, 28, 1) in [0, 1]
```
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SEVERITY_PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "zoom_blur": (1.05, 1.10, 1.15, 1.20, 1.25),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}
CORRUPTIONS = tuple(SEVERITY_PARAMETERS)
SEVERITIES = (1, 2, 3, 4, 5)


def _seed_pair(seed):
    """An int64 stateless seed pair from an int or a pair of ints / tensors."""
    if isinstance(seed, (tuple, list)):
        return tf.stack([tf.cast(part, tf.int64) for part in seed])
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.stack([seed, tf.zeros_like(seed)]) if seed.shape.rank == 0 else seed


def _seeds(seed, count: int):
    """``count`` independent stateless seeds from a seed pair."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def gaussian_noise(x, std, seed):
    return x + std * tf.random.stateless_normal(tf.shape(x), _seeds(seed, 1)[0])


def shot_noise(x, photons, seed):
    counts = tf.random.stateless_poisson(tf.shape(x), _seeds(seed, 1)[0], x * photons, x.dtype)
    return counts / photons


def impulse_noise(x, amount, seed):
    hit_seed, salt_seed = _seeds(seed, 2)
    hit = tf.random.stateless_uniform(tf.shape(x), hit_seed) < amount
    salt = tf.cast(tf.random.stateless_uniform(tf.shape(x), salt_seed) < 0.5, x.dtype)
    return tf.where(hit, salt, x)


def _filter(x, kernel: np.ndarray):
    """``x`` convolved per channel with a 2-D ``kernel`` (odd size), reflected borders."""
    kh, kw = kernel.shape
    padded = tf.pad(x, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]], mode="REFLECT")
    channels = x.shape[-1]
    weights = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, channels, 1)), x.dtype)
    return tf.nn.depthwise_conv2d(padded, weights, [1, 1, 1, 1], "VALID")


def _gaussian_1d(sigma: float, radius: int) -> np.ndarray:
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2.0 * sigma**2))
    return taps / taps.sum()


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 2-D Gaussian, truncated at 4 sigma (as scikit-image's ``gaussian``)."""
    taps = _gaussian_1d(sigma, max(1, int(4.0 * sigma + 0.5)))
    return np.outer(taps, taps)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """CIFAR-10-C's defocus kernel: a normalised disk of ``radius`` on a
    17x17 grid, smoothed by a 3-tap Gaussian of ``alias_blur``, cropped to
    its non-zero support."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = _gaussian_1d(alias_blur, 1)
    for axis in (0, 1):
        disk = np.apply_along_axis(np.convolve, axis, disk, taps, mode="same")
    rows, cols = np.flatnonzero(disk.any(axis=1)), np.flatnonzero(disk.any(axis=0))
    return disk[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def gaussian_blur(x, sigma, seed):
    return _filter(x, gaussian_kernel(sigma))


def defocus_blur(x, radius_and_alias, seed):
    return _filter(x, disk_kernel(*radius_and_alias))


def zoom_blur(x, max_zoom, seed):
    """Mean of ``x`` and its central zooms by 1, 1.01, ..., ``max_zoom`` (bilinear)."""
    zooms = 1.0 + 0.01 * np.arange(int(round((max_zoom - 1.0) / 0.01)) + 1)
    half = 0.5 / zooms
    boxes = np.stack([0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half], axis=1).astype(np.float32)
    batch, height, width = tf.shape(x)[0], x.shape[1], x.shape[2]
    zoomed = tf.image.crop_and_resize(
        x, tf.tile(boxes, [batch, 1]), tf.repeat(tf.range(batch), len(zooms)), (height, width))
    zoomed = tf.reshape(zoomed, tf.concat([[batch, len(zooms)], tf.shape(x)[1:]], 0))
    return (x + tf.reduce_sum(zoomed, axis=1)) / (len(zooms) + 1.0)


def contrast(x, factor, seed):
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)  # per image and channel
    return (x - mean) * factor + mean


def brightness(x, delta, seed):
    if x.shape[-1] == 1:
        return x + delta
    hsv = tf.image.rgb_to_hsv(x)
    value = tf.clip_by_value(hsv[..., 2:] + delta, 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.concat([hsv[..., :2], value], axis=-1))


def pixelate(x, share, seed):
    size = (x.shape[1], x.shape[2])
    small = (int(size[0] * share), int(size[1] * share))
    return tf.image.resize(tf.image.resize(x, small, method="area"), size, method="nearest")


def jpeg_compression(x, quality, seed):
    compress = lambda image: tf.image.adjust_jpeg_quality(image, quality)  # noqa: E731
    out = tf.map_fn(compress, x, fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
    return tf.ensure_shape(out, x.shape)


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}


def check_corruption(corruption: str, severity: int) -> None:
    if corruption not in _FUNCTIONS:
        raise ValueError(f"Unknown corruption {corruption!r}; choose from {CORRUPTIONS}.")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}.")


def corrupt(images, corruption: str, severity: int, seed=0) -> tf.Tensor:
    """``images`` with ``corruption`` at ``severity`` (1-5), float32 in [0, 1].

    Args:
        images: float images in [0, 1], ``(H, W, C)`` or ``(B, H, W, C)``,
            1 or 3 channels, static height, width and channels.
        corruption: a name in :data:`CORRUPTIONS`.
        severity: 1 (mildest) to 5; parameters in :data:`SEVERITY_PARAMETERS`.
        seed: an int or a pair of ints (e.g. ``(seed, batch_index)``); noise
            corruptions are a function of it and of the batch shape.
    """
    check_corruption(corruption, severity)
    x = tf.convert_to_tensor(images, tf.float32)
    if x.shape.rank not in (3, 4) or x.shape[-1] not in (1, 3) or None in x.shape[-3:]:
        raise ValueError(
            f"corrupt needs (H, W, C) or (B, H, W, C) images with 1 or 3 channels and a "
            f"known size, got shape {x.shape}."
        )
    single = x.shape.rank == 3
    batch = x[None] if single else x
    out = _graph(corruption, severity, tuple(batch.shape[1:]))(batch, _seed_pair(seed))
    return out[0] if single else out


_GRAPHS: dict = {}


def _graph(corruption: str, severity: int, image_shape: tuple):
    """One traced graph per corruption, severity and image size (any batch
    size): fast when called eagerly, and the kernels see static shapes."""
    key = (corruption, severity, image_shape)
    if key not in _GRAPHS:
        parameter = SEVERITY_PARAMETERS[corruption][severity - 1]
        function = _FUNCTIONS[corruption]

        @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32),
                                      tf.TensorSpec((2,), tf.int64)])
        def apply(batch, seed):
            return tf.clip_by_value(function(batch, parameter, seed), 0.0, 1.0)

        _GRAPHS[key] = apply
    return _GRAPHS[key]


def corrupt_dataset(dataset, corruption: str, severity: int, seed: int = 0):
    """Maps a ``tf.data`` dataset of image batches, or of ``(images, ...)``
    tuples, to corrupted images (other elements unchanged). The ``i``-th
    element is corrupted with seed ``(seed, i)``, so a dataset in a fixed
    order gives the same images on every pass.

    Examples:

    ```python
    test_c = corrupt_dataset(test_ds, "shot_noise", severity=5, seed=0)
    model.evaluate(test_c)
    ```
    """
    check_corruption(corruption, severity)

    def apply(index, element):
        if isinstance(element, tuple):
            return (corrupt(element[0], corruption, severity, (seed, index)),) + element[1:]
        return corrupt(element, corruption, severity, (seed, index))

    return dataset.enumerate().map(apply, num_parallel_calls=tf.data.AUTOTUNE)
