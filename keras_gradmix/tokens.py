"""Token outputs ``(B, N, C)`` of vision transformers as feature maps ``(B, h, w, C)``.

A transformer layer's output is a sequence of ``N`` tokens: ``p`` leading
prefix tokens (class, distillation, register tokens) and the ``h * w`` patch
tokens in raster order. Dropping the prefix and reshaping gives a spatial
map that Grad-CAM, LayerCAM and Grad-CAM++ treat like a convolutional one::

    prefix, grid = token_grid(197, image_size=(224, 224))   # 1, (14, 14)
    feature_map = tokens_to_map(tokens, prefix, grid)       # (B, 14, 14, C)

The grid is inferred from ``N`` and the image's aspect ratio: the smallest
prefix ``p <= MAX_PREFIX`` for which ``N - p`` factors as ``h * w`` with
``h / w`` within 15 % of ``H / W``. Ambiguous cases take explicit
``prefix_tokens`` and ``token_grid`` (GradMix options).
"""

from __future__ import annotations

from keras import ops

MAX_PREFIX = 8  # class + distillation + up to 6 register tokens
ASPECT_TOLERANCE = 0.15


def _grid_of(count: int, image_size) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w == count`` and ``h / w`` closest to ``H / W``."""
    height, width = image_size
    aspect = height / width
    best = None
    for h in range(1, count + 1):
        if count % h:
            continue
        w = count // h
        error = abs(h / w - aspect) / aspect
        if error <= ASPECT_TOLERANCE and (best is None or error < best[0]):
            best = (error, (h, w))
    return None if best is None else best[1]


def token_grid(tokens: int, image_size, prefix: int | None = None,
               grid: tuple[int, int] | None = None) -> tuple[int, tuple[int, int]]:
    """The prefix-token count and the ``(h, w)`` patch grid of ``tokens`` tokens.

    Args:
        tokens: ``N``, the token count of the layer's output.
        image_size: ``(H, W)`` of the input images.
        prefix: the leading non-patch tokens, if known.
        grid: the patch grid ``(h, w)``, if known.

    Raises:
        ValueError: when no grid fits, naming the options that fix it.
    """
    tokens = int(tokens)
    if grid is not None:
        h, w = (int(v) for v in grid)
        p = tokens - h * w if prefix is None else int(prefix)
        if p < 0 or p + h * w != tokens or (prefix is None and p > MAX_PREFIX):
            raise ValueError(
                f"token_grid={tuple(grid)} with prefix_tokens={prefix} does not fit a "
                f"layer output of {tokens} tokens ({p} prefix + {h} x {w} patches expected)."
            )
        return p, (h, w)
    candidates = range(0, min(MAX_PREFIX, tokens - 1) + 1) if prefix is None else [int(prefix)]
    for p in candidates:
        found = _grid_of(tokens - p, image_size) if tokens - p > 0 else None
        if found is not None:
            return p, found
    raise ValueError(
        f"No patch grid fits a layer output of {tokens} tokens for images of "
        f"{image_size[0]} x {image_size[1]} (tried {list(candidates)} leading prefix "
        f"tokens and grids within {ASPECT_TOLERANCE:.0%} of the image's aspect ratio). "
        f"Pass prefix_tokens=p and token_grid=(h, w), e.g. prefix_tokens=1, "
        f"token_grid=(14, 14) for a ViT-B/16 at 224 x 224 with a class token."
    )


def is_tokens(tensor) -> bool:
    """A ``(B, N, C)`` tensor."""
    return len(tensor.shape) == 3


def tokens_to_map(tokens, prefix: int, grid: tuple[int, int]):
    """``(B, N, C)`` tokens -> ``(B, h, w, C)``: the prefix dropped, patches reshaped."""
    h, w = grid
    patches = tokens[:, prefix:, :]
    return ops.reshape(patches, (-1, h, w, tokens.shape[-1]))


def as_feature_map(tensor, image_size, prefix=None, grid=None):
    """A 4-D feature map as it is; a token output of an image model as its
    patch-grid map (a sequence's ``(B, T, C)`` output is its own map)."""
    if not is_tokens(tensor) or len(image_size) != 2:
        return tensor
    p, hw = token_grid(tensor.shape[1], image_size, prefix, grid)
    return tokens_to_map(tensor, p, hw)


def fits_a_grid(tensor, image_size, prefix=None, grid=None) -> bool:
    """Whether ``tensor`` is a 4-D map or tokens with a patch grid."""
    if len(tensor.shape) == 4:
        return True
    if not is_tokens(tensor) or tensor.shape[1] is None:
        return False
    try:
        token_grid(tensor.shape[1], image_size, prefix, grid)
    except ValueError:
        return False
    return True

