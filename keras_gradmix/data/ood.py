"""Synthetic out-of-distribution sets that need no download."""

from __future__ import annotations

import numpy as np


def uniform_noise(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``count`` images of i.i.d. uniform [0, 1) pixels, float32 ``(count, *shape)``."""
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


def permuted_pixels(images, seed: int = 0) -> np.ndarray:
    """Each image with its pixel positions shuffled (one permutation per image,
    shared by its channels): the intensity histogram stays, the shapes go.

    ``images``: ``(N, H, W)`` or ``(N, H, W, C)``.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"permuted_pixels needs (N, H, W[, C]) images, got shape {images.shape}.")
    n, h, w = images.shape[:3]
    flat = images.reshape(n, h * w, -1)
    order = np.random.default_rng(seed).permuted(np.tile(np.arange(h * w), (n, 1)), axis=1)
    return np.take_along_axis(flat, order[..., None], axis=1).reshape(images.shape)
