"""Where to mask: the masked-area fraction, and a box or threshold mask on a map.

Pure, XLA-compilable functions (``keras.ops``, no Beta/Gamma ops, no loops over
the batch)::

    area = sample_mask_area((), seed=keras.random.SeedGenerator(0))  # in [0.1, 0.5]
    mask, masked = box_masks(maps, area)   # (B, H, W) bool, (B,) real area fraction
    mask, masked = threshold_masks(maps, area)   # the top-attribution pixels instead
    where = placement_scores(maps, "random", keras.random.uniform(maps.shape))
    mask, masked = box_masks(where, area)  # the same box at a random place (the control)

Maps over any grid work the same: a sequence's ``(B, T)`` maps give intervals
(a contiguous span), a volume's ``(B, D, H, W)`` maps give boxes in three
dimensions; ``area`` is the share of the whole grid, or, given the ``valid``
places of token ids, of each sequence's real tokens (padding is never masked).

A box near the border is shifted inside the image (``border="shift"``), so
every placement masks the same area; ``border="clip"`` clips it, as the
authors' code does (a box at a random place then masks less than one at the
peak: 0.193 vs 0.235 of the image for 0.25 asked, in the placement study).
"""

from __future__ import annotations

import math

import keras
from keras import ops

# Marsaglia-Tsang proposals drawn at once; P(all rejected) <= 0.05**16 ~ 1.5e-21.
_GAMMA_PROPOSALS = 16


def validate_mask_area(mask_area) -> tuple[float, float]:
    """Checks ``mask_area=(low, high)`` with ``0 < low <= high < 1``; returns floats."""
    try:
        low, high = (float(v) for v in mask_area)
    except (TypeError, ValueError):
        raise ValueError(
            f"mask_area must be a pair (low, high) of fractions of the image, got "
            f"{mask_area!r}. Example: mask_area=(0.1, 0.5)."
        ) from None
    if not 0.0 < low <= high < 1.0:
        raise ValueError(
            f"mask_area must satisfy 0 < low <= high < 1 (fractions of the image "
            f"area), got {mask_area!r}. Example: mask_area=(0.1, 0.5)."
        )
    return low, high


def split_seed(seed, count: int) -> list:
    """Seeds for ``count`` independent draws.

    A ``SeedGenerator`` (or None, the global one) advances by itself at each
    draw. One int reused for several draws would make them identical streams,
    so an int gives ``count`` distinct derived ints.
    """
    if isinstance(seed, int) and not isinstance(seed, bool):
        return [(seed * 1_000_003 + k) % (2**31 - 1) for k in range(count)]
    return [seed] * count


def sample_gamma(shape, concentration: float, seed=None):
    """Gamma(concentration, 1) samples built from normal and uniform draws only.

    Marsaglia & Tsang (2000) with a fixed number of vectorised proposals (the
    first accepted one is returned), so it compiles with XLA, unlike the Gamma
    ops behind ``keras.random.gamma``/``beta``. Concentrations below 1 use
    ``Gamma(a) = Gamma(a + 1) * U ** (1 / a)``.
    """
    shape = tuple(shape)
    a = float(concentration)
    if a <= 0:
        raise ValueError(f"Gamma concentration must be > 0, got {concentration}.")
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    proposals = (_GAMMA_PROPOSALS,) + shape
    seeds = split_seed(seed, 3)
    x = keras.random.normal(proposals, seed=seeds[0])
    u = keras.random.uniform(proposals, seed=seeds[1])
    v = ops.maximum(1.0 + c * x, 1e-6) ** 3  # v <= 0 proposals are rejected below
    accept = (1.0 + c * x > 0) & (
        ops.log(u) < 0.5 * x * x + d - d * v + d * ops.log(v)
    )
    first = ops.argmax(ops.cast(accept, "int32"), axis=0)  # first accepted proposal
    gamma = ops.take_along_axis(d * v, first[None], axis=0)[0]
    if boost:
        gamma = gamma * keras.random.uniform(shape, seed=seeds[2]) ** (1.0 / a)
    return gamma


def validate_beta(alpha, beta) -> tuple[float, float]:
    """Checks the Beta parameters (both > 0); returns floats."""
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"alpha and beta must be > 0, got alpha={alpha}, beta={beta}.")
    return float(alpha), float(beta)


def sample_beta(shape, alpha: float = 1.0, beta: float = 1.0, seed=None):
    """Beta(alpha, beta) samples that compile with XLA (uniform when alpha = beta = 1)."""
    alpha, beta = validate_beta(alpha, beta)
    if alpha == 1.0 and beta == 1.0:
        return keras.random.uniform(tuple(shape), seed=seed)
    seed_x, seed_y = split_seed(seed, 2)
    x = sample_gamma(shape, alpha, seed=seed_x)
    y = sample_gamma(shape, beta, seed=seed_y)
    return x / (x + y)


def sample_mask_area(
    shape=(),
    mask_area: tuple[float, float] = (0.1, 0.5),
    alpha: float = 1.0,
    beta: float = 1.0,
    seed=None,
):
    """Masked-area fractions, as in the paper: ``1 - lam``, ``lam = 0.5 + 0.4 u``.

    With ``u ~ Beta(alpha, beta)`` and ``mask_area = (low, high)`` the masked
    fraction is ``high - (high - low) * u``, i.e. ``lam = 1 - high + (high - low) u``;
    the defaults give the paper's ``lam = 0.5 + 0.4 u`` (10-50 % of the image).
    """
    low, high = validate_mask_area(mask_area)
    u = sample_beta(shape, alpha, beta, seed=seed)
    return high - (high - low) * u


def peak_positions(maps):
    """Row and column of each map's maximum (the first one in raster order on
    ties): one ``(B,)`` int32 index per grid axis (one for ``(B, T)`` maps,
    three for ``(B, D, H, W)``)."""
    sizes = [int(s) for s in maps.shape[1:]]
    flat = ops.argmax(ops.reshape(maps, (ops.shape(maps)[0], -1)), axis=-1)
    flat = ops.cast(flat, "int32")
    out = []
    for axis in range(len(sizes)):  # the flat index in raster order, unravelled
        stride = math.prod(sizes[axis + 1:])
        index = flat // stride if stride > 1 else flat
        out.append(index % sizes[axis] if axis else index)
    return tuple(out)


def per_item(values, like):
    """``(B,)`` values shaped to broadcast against ``like`` (``(B, 1, ..., 1)``)."""
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


BORDERS = ("shift", "clip")


def box_masks(maps, area, border: str = "shift"):
    """Boxes centred on each map's peak, covering ``area`` of the image.

    The box has the image's aspect ratio, sides ``round(H * sqrt(area))`` by
    ``round(W * sqrt(area))``, rows ``[cy - side_h // 2, cy - side_h // 2 + side_h)``
    (columns alike). A box that would cross the border is shifted inside the
    image (``border="shift"``): it keeps its whole area, wherever it lands,
    and still holds the peak. ``border="clip"`` cuts it at the border instead
    (the authors' code): less area near the border. Over a ``(B, T)`` grid the
    box is a span of ``round(T * area)`` steps; over ``(B, D, H, W)`` its sides
    are ``round(S * area ** (1/3))``.

    Args:
        maps: ``(B, H, W)`` attribution maps at image resolution (or any grid).
        area: masked-area fraction, a scalar or ``(B,)``.
        border: ``"shift"`` or ``"clip"``.

    Returns:
        ``mask``: ``(B, H, W)`` bool, True inside the box; ``masked``: ``(B,)``
        float32, the real masked fraction of each image (``side_h * side_w /
        (H * W)`` when shifted: the area asked, to the pixel grid).
    """
    return boxes_at(peak_positions(maps), area, tuple(maps.shape[1:]), border)


def boxes_at(centres, area, image_size, border: str = "shift"):
    """Boxes centred at ``centres``, one ``(B,)`` int32 index per grid axis
    (rows and columns of images), as :func:`box_masks` places them at a map's
    peak; ``image_size`` the grid's size."""
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}.")
    sizes = [int(s) for s in image_size]
    if len(centres) != len(sizes):
        raise ValueError(f"{len(centres)} centre coordinates for a {len(sizes)}-D grid {tuple(sizes)}.")
    centres = [ops.cast(ops.convert_to_tensor(c), "int32") for c in centres]
    batch = ops.shape(centres[0])[0]
    area = ops.broadcast_to(ops.cast(area, "float32"), (batch,))
    # The side's share of each axis: area ** (1 / axes) (sqrt for images, as always).
    side = area if len(sizes) == 1 else ops.sqrt(area) if len(sizes) == 2 else area ** (1.0 / len(sizes))
    mask, count = None, 1
    for axis, (size, centre) in enumerate(zip(sizes, centres)):
        length = ops.cast(ops.floor(size * side + 0.5), "int32")
        start = centre - length // 2
        if border == "shift":  # inside: [0, size - length] (holds the centre: it is < size)
            start = ops.minimum(ops.maximum(start, 0), size - length)
        steps = ops.arange(size, dtype="int32")[None, :]  # (1, size)
        inside = (steps >= start[:, None]) & (steps < (start + length)[:, None])  # (B, size)
        shape = [-1] + [size if a == axis else 1 for a in range(len(sizes))]
        inside = ops.reshape(inside, shape)
        mask = inside if mask is None else mask & inside
        count = count * (ops.clip(start + length, 0, size) - ops.clip(start, 0, size))
    masked = ops.cast(count, "float32") / float(math.prod(sizes))
    return mask, masked


def spans_within(scores, area, valid, border: str = "shift"):
    """Spans over each sequence's valid places only (its tokens, not its
    padding): ``round(area * n)`` of its ``n`` valid places, consecutive
    among them, centred on the highest score there and shifted inside them
    (``border="clip"``: cut at their ends).

    Args:
        scores: ``(B, T)`` placement scores (:func:`placement_scores`).
        area: the share of each sequence's valid places, a scalar or ``(B,)``.
        valid: ``(B, T)`` bool, the places that may be masked.

    Returns:
        ``mask``: ``(B, T)`` bool, never True where ``valid`` is False;
        ``masked``: ``(B,)`` float32, the share of the valid places masked.
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}.")
    valid = ops.cast(valid, "bool")
    count = ops.sum(ops.cast(valid, "int32"), axis=-1)
    rank = ops.cumsum(ops.cast(valid, "int32"), axis=-1) - 1  # place among the valid ones
    scores = ops.where(valid, ops.cast(scores, "float32"), -float("inf"))
    centre = ops.take_along_axis(rank, ops.argmax(scores, axis=-1)[:, None], axis=1)[:, 0]
    area = ops.broadcast_to(ops.cast(area, "float32"), ops.shape(count))
    length = ops.minimum(ops.cast(ops.floor(area * ops.cast(count, "float32") + 0.5), "int32"), count)
    start = centre - length // 2
    if border == "shift":
        start = ops.minimum(ops.maximum(start, 0), count - length)
    mask = valid & (rank >= start[:, None]) & (rank < (start + length)[:, None])
    kept = ops.clip(start + length, 0, count) - ops.clip(start, 0, count)
    return mask, ops.cast(kept, "float32") / ops.cast(ops.maximum(count, 1), "float32")


def threshold_masks(maps, area, valid=None):
    """Masks the ``round(area * H * W)`` highest-attribution pixels of each map
    (of any grid: steps of a sequence, voxels of a volume).

    A free-form mask that always contains the peak. Ties at the threshold go to
    the earliest pixels in raster order, so the mask is deterministic.

    Args:
        maps: ``(B, H, W)`` attribution maps at image resolution.
        area: masked-area fraction, a scalar or ``(B,)``.
        valid: ``(B, H, W)`` bool, the places that may be masked (token ids:
            not the padding), or None for all; ``area`` is then their share.

    Returns:
        ``mask``: ``(B, H, W)`` bool; ``masked``: ``(B,)`` float32 real fraction.
    """
    pixels = math.prod(int(s) for s in maps.shape[1:])
    batch = ops.shape(maps)[0]
    flat = ops.reshape(ops.cast(maps, "float32"), (batch, pixels))
    area = ops.broadcast_to(ops.cast(area, "float32"), (batch,))
    places = pixels
    if valid is not None:
        valid = ops.reshape(ops.cast(valid, "bool"), (batch, pixels))
        flat = ops.where(valid, flat, -float("inf"))
        places = ops.sum(ops.cast(valid, "int32"), axis=-1)
    count = ops.clip(ops.cast(ops.floor(area * ops.cast(places, "float32") + 0.5), "int32"), 0, places)
    descending = ops.flip(ops.sort(flat, axis=-1), axis=-1)
    threshold = ops.take_along_axis(descending, ops.maximum(count - 1, 0)[:, None], axis=1)
    above = flat > threshold
    tied = flat == threshold
    room = count - ops.sum(ops.cast(above, "int32"), axis=-1)  # tied pixels still to take
    tie_rank = ops.cumsum(ops.cast(tied, "int32"), axis=-1)
    mask = above | (tied & (tie_rank <= room[:, None]))
    masked = ops.cast(count, "float32") / ops.cast(ops.maximum(places, 1), "float32")
    return ops.reshape(mask, ops.shape(maps)), masked


MASKS = {"box": box_masks, "threshold": threshold_masks}


def place_masks(kind: str, scores, area, border: str = "shift", valid=None):
    """``MASKS[kind]`` on ``scores`` (see :func:`placement_scores`); ``border``
    applies to boxes (a threshold mask always takes its whole pixel count).
    ``valid``: ``(B, T)`` token places that may be masked (:func:`spans_within`)."""
    if valid is not None:
        if kind == "box":
            return spans_within(scores, area, valid, border)
        return threshold_masks(scores, area, valid)
    if kind == "box":
        return box_masks(scores, area, border)
    return MASKS[kind](scores, area)
PLACEMENTS = ("peak", "random", "low")


def placement_scores(maps, placement: str = "peak", draw=None, valid=None):
    """The scores a mask is placed on: :func:`box_masks` centres the box on
    their maximum, :func:`threshold_masks` takes their highest pixels.

    ``"peak"``: the maps themselves (GradMix). ``"random"``: ``draw``, i.e.
    uniform noise, so the box centre is a uniformly random pixel and the
    threshold mask a uniformly random set of pixels of the same count.
    ``"low"``: the least-attended place: the maps' minima first, in a random
    order among themselves (normalised maps are often 0 at many pixels; raster
    order would put every box in the top-left corner), then the other pixels
    from low to high attribution.

    Args:
        maps: ``(B, H, W)`` attribution maps (or any grid).
        placement: one of ``PLACEMENTS``.
        draw: uniform ``[0, 1)`` values shaped like ``maps`` (``"random"``, ``"low"``).
        valid: bool like ``maps``, the places that may be masked (token ids),
            whose minima ``"low"`` takes; None: all.
    """
    if placement == "peak":
        return maps
    if draw is None:
        raise ValueError(f"placement={placement!r} needs a uniform (B, H, W) draw.")
    draw = ops.cast(draw, "float32")
    if placement == "random":
        return draw
    if placement != "low":
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}.")
    maps = ops.cast(maps, "float32")
    axes = tuple(range(1, len(maps.shape)))
    among = maps if valid is None else ops.where(valid, maps, float("inf"))
    lowest = maps <= ops.min(among, axis=axes, keepdims=True)
    scale = ops.max(ops.abs(maps), axis=axes, keepdims=True)
    # Minima above every other pixel (whose scores -maps are <= scale).
    return ops.where(lowest, 2.0 * scale + 1.0 + draw, -maps)
