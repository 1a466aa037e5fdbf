"""Token-id inputs: GradMix on text classifiers fed integer ids.

The grid is the token positions: an input ``(B, T)`` of ids, or a KerasHub
text classifier's preprocessed inputs ``{"token_ids": (B, T),
"padding_mask": (B, T), ...}``. GradMix attributes a layer with a
``(B, T, D)`` output (the embedding, an encoder block) over the positions,
takes a span (or the highest-attributed tokens) covering the sampled share
of each sequence's *real* tokens, and replaces their ids with ``fill``, a
mask or pad id the user gives (``fill="shuffle"`` permutes them instead).
Padding is never chosen: the positions where ``padding_mask`` is False and
those whose id is unselectable (``unselectable_token_ids=(0,)`` by default,
as KerasHub's ``MaskedLMMaskGenerator``: Keras' ``TextVectorization`` pads
with 0; add the special tokens a [CLS]-pooled model reads, whose maps are
otherwise the highest)::

    valid = valid_positions(x, unselectable=(0,))  # (B, T) bool, the real tokens
    mask, share = masks.place_masks("box", maps, 0.25, valid=valid)
    ids = apply_fill(token_ids(x), mask, 103.0)    # [MASK] for BERT's vocabulary
"""

from __future__ import annotations

import keras
from keras import ops

TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"


def is_token_input(x) -> bool:
    """Whether ``x`` is token ids: a rank-2 integer tensor ``(B, T)``, or a
    dict with ``"token_ids"`` (KerasHub's text inputs)."""
    if isinstance(x, dict):
        return TOKEN_IDS in x
    dtype = getattr(x, "dtype", None)
    if dtype is None or len(getattr(x, "shape", ())) != 2:
        return False
    dtype = keras.backend.standardize_dtype(dtype)
    return "int" in dtype


def token_ids(x):
    """The ``(B, T)`` ids of a token input."""
    return x[TOKEN_IDS] if isinstance(x, dict) else x


def valid_positions(x, unselectable=(0,)):
    """``(B, T)`` bool, the tokens that may be masked: not padding (a dict's
    ``padding_mask``) and no id in ``unselectable``."""
    ids = token_ids(x)
    valid = ops.ones(ops.shape(ids), "bool")
    if isinstance(x, dict) and PADDING_MASK in x:
        valid = ops.cast(x[PADDING_MASK], "bool")
    for unwanted in unselectable:
        valid = valid & ops.not_equal(ids, ops.cast(unwanted, ids.dtype))
    return valid


def with_token_ids(x, ids, index=None, copies: int = 1):
    """The masked pass's inputs: ``ids`` in place of ``x``'s. A dict's other
    entries (padding mask, segment ids) follow the masked images: taken at
    ``index`` (None: all) and repeated ``copies`` times (the auxiliary
    positives double the batch)."""
    if not isinstance(x, dict):
        return ids

    def follow(value):
        value = value if index is None else ops.take(value, index, axis=0)
        return value if copies == 1 else ops.concatenate([value] * copies, axis=0)

    return {key: ids if key == TOKEN_IDS else follow(value) for key, value in x.items()}


def check_token_options(options) -> None:
    """Raises for options that have no meaning on token ids, naming the fix."""
    fill = options.fill
    if fill in ("noise", "mix"):
        what = ("draws pixel values" if fill == "noise" else
                "pastes a partner's tokens, padding included")
        raise ValueError(
            f"fill={fill!r} {what}; token ids are replaced by an id: pass fill=<id>, e.g. "
            f"the tokenizer's mask token id (BERT's [MASK] is 103) or its pad id, or "
            f"fill='shuffle' to permute the chosen tokens.")
    if not isinstance(fill, str) and not float(fill).is_integer():
        raise ValueError(f"fill={fill!r} is not a token id; pass an integer id (a mask or pad id).")
    if options.policy is not None or options.normalization is not None:
        raise ValueError(
            "CutMix/MixUp policies and normalization= are for images; token ids take "
            "policy=None and normalization=None.")
