"""What goes into the masked region: noise, a constant, a partner image, or
the region's own pixels shuffled.

Pure, XLA-compilable functions (``keras.ops``)::

    masked = apply_fill(images, mask, "noise", seed=seed)           # U[0, 1) noise
    partner = random_partner(batch_size, seed=seed)
    mixed = apply_fill(images, mask, "mix", partner=partner)         # CutMix-style paste
    shuffled = apply_fill(images, mask, "shuffle", seed=seed)       # ASCOOD's "shuffle"
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

FILLS = ("noise", "mix", "shuffle")


def validate_fill(fill) -> str | float:
    """``"noise"``, ``"mix"``, ``"shuffle"`` or a number; anything else is a ValueError."""
    message = (f"fill must be 'noise', 'mix', 'shuffle' or a number (a constant pixel value), "
               f"got {fill!r}.")
    if isinstance(fill, bool) or not isinstance(fill, (str, numbers.Real)):
        raise ValueError(message)
    if not isinstance(fill, str) and not math.isfinite(fill):
        raise ValueError(f"A constant fill must be a finite number, got {fill!r}.")
    if isinstance(fill, str) and fill not in FILLS:
        raise ValueError(message)
    return fill if isinstance(fill, str) else float(fill)


def attribution_share(maps, mask):
    """Share of each map's attribution mass inside ``mask``: ``(B,)`` float32.

    SnapMix-style label weights use it. A map with no mass (flat after
    normalisation) counts as uniform, so its share is the masked area.
    """
    maps = ops.cast(maps, "float32")
    mask = ops.cast(mask, "float32")
    axes = tuple(range(1, len(maps.shape)))
    total = ops.sum(maps, axis=axes)
    inside = ops.sum(maps * mask, axis=axes)
    area = ops.mean(mask, axis=axes)
    return ops.where(total > 0, inside / ops.maximum(total, 1e-12), area)


def random_partner(batch_size, seed=None):
    """A random permutation of ``range(batch_size)`` (argsort of uniforms: XLA-safe)."""
    return ops.argsort(keras.random.uniform((batch_size,), seed=seed))


def sample_noise(batch_size, image_size, value_range=(0.0, 1.0), seed=None, dtype="float32"):
    """``(B, H, W, 1)`` uniform noise in ``value_range``: one value per pixel,
    shared by the channels (as the GradMix reference code); ``(B, *grid, 1)``
    for any grid ``image_size``."""
    low, high = value_range
    shape = (batch_size, *(int(s) for s in image_size), 1)
    return keras.random.uniform(shape, low, high, seed=seed, dtype=dtype)


def shuffle_masked(images, mask, keys):
    """Each image's masked pixels permuted among themselves (all channels of a
    pixel move together); the others unchanged. ``keys``: ``(B, H, W)``
    uniforms, the permutation (the masked pixels in the order of their keys
    take the masked places in raster order). Argsorts and gathers only: XLA-safe.
    """
    batch = ops.shape(images)[0]
    pixels = math.prod(int(s) for s in images.shape[1:-1])  # any grid: steps, pixels, voxels
    flat = ops.reshape(images, (batch, pixels, images.shape[-1]))
    masked = ops.reshape(mask, (batch, pixels))
    position = ops.cast(ops.arange(pixels), "float32")[None, :]
    # Masked places in raster order first, and masked pixels in random order first.
    places = ops.argsort(ops.where(masked, position, pixels + position), axis=-1)
    keys = ops.reshape(ops.cast(keys, "float32"), (batch, pixels))
    sources = ops.argsort(ops.where(masked, keys, 2.0 + position), axis=-1)
    rank = ops.argsort(places, axis=-1)  # each place's index in ``places``
    source = ops.where(masked, ops.take_along_axis(sources, rank, axis=-1),
                       ops.cast(ops.arange(pixels), sources.dtype)[None, :])
    moved = ops.take_along_axis(flat, ops.cast(source, "int32")[..., None], axis=1)
    return ops.reshape(moved, ops.shape(images))


def apply_fill(
    images,
    mask,
    fill="noise",
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    partner=None,
    seed=None,
    noise=None,
):
    """Replaces the pixels of ``images`` where ``mask`` is True.

    Args:
        images: ``(B, H, W, C)`` images, channels last (or any grid:
            ``(B, T, C)`` sequences, ``(B, D, H, W, C)`` volumes).
        mask: ``(B, H, W)`` bool (the grid), True where the image is replaced.
        fill: ``"noise"``: uniform noise in ``value_range``, one value per pixel
            shared by all channels (as the GradMix reference code);
            ``"mix"``: the same pixels of ``images[partner]``;
            ``"shuffle"``: the masked pixels themselves, permuted at random
            within each image (ASCOOD's outliers: :func:`shuffle_masked`);
            a number: that constant.
        value_range: range of the noise, in the images' own value range.
        partner: ``(B,)`` partner indices, required for ``"mix"``.
        seed: ``int`` or ``keras.random.SeedGenerator`` for the noise.
        noise: ``(B, H, W, 1)`` noise drawn beforehand (:func:`sample_noise`),
            or with ``"shuffle"`` the uniforms that order the permutation;
            ``seed`` is then unused.

    Token ids ``(B, T)`` (as many axes as ``mask``: no channel axis) take a
    constant id or ``"shuffle"`` and stay integers.

    Returns:
        Float images, same shape; pixels outside the mask are unchanged.
    """
    fill = validate_fill(fill)
    images = ops.convert_to_tensor(images)
    if len(images.shape) == len(mask.shape):  # token ids: one "channel", kept integer
        if fill in ("noise", "mix"):
            raise ValueError(f"Token ids take a constant id or 'shuffle' as fill, not {fill!r}.")
        return _fill(images[..., None], mask, fill, value_range, partner, seed, noise)[..., 0]
    if not keras.backend.is_float_dtype(images.dtype):
        images = ops.cast(images, "float32")
    return _fill(images, mask, fill, value_range, partner, seed, noise)


def _fill(images, mask, fill, value_range, partner, seed, noise):
    if fill == "noise":
        if noise is None:
            noise = sample_noise(
                ops.shape(images)[0], images.shape[1:-1], value_range, seed, images.dtype
            )
        content = ops.cast(noise, images.dtype)
    elif fill == "shuffle":
        if noise is None:
            noise = keras.random.uniform((ops.shape(images)[0], *images.shape[1:-1], 1), seed=seed)
        return shuffle_masked(images, mask, ops.reshape(noise, ops.shape(mask)))
    elif fill == "mix":
        if partner is None:
            raise ValueError("fill='mix' needs partner indices, e.g. random_partner(B).")
        content = ops.take(images, partner, axis=0)
    else:
        content = ops.cast(fill, images.dtype)
    return ops.where(mask[..., None], content, images)
