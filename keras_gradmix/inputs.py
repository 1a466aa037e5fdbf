"""The space of the images the user feeds, and the first batch ``fit`` sees.

GradMix masks images as fed: raw pixels in ``value_range``. When that range
is not given it is read from the model: a KerasHub task applies its
preprocessor (an image converter that resizes and rescales raw ``[0, 255]``
images) in its own ``fit``/``predict``, not in ``call``, so ``GradMixModel``
runs the converter as the first step of its forward instead, and masks in raw
pixels; a model that starts with ``Rescaling(1/255)`` (to [0, 1]) or
``Rescaling(1/127.5, offset=-1)`` (to [-1, 1]) is fed ``[0, 255]`` pixels.

The first batch ``fit`` sees is read by :func:`keras_gradmix.inspection.first_batch`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_gradmix.token_ids import is_token_input, token_ids


def image_converter(model):
    """The image converter of a KerasHub task's preprocessor, else None."""
    preprocessor = getattr(model, "preprocessor", None)
    return getattr(preprocessor, "image_converter", None)


def default_value_range(model) -> tuple[float, float]:
    """The raw pixel range the model is fed (see the module docstring)."""
    if image_converter(model) is not None:
        return 0.0, 255.0  # KerasHub's convention for its image converters
    first = next((layer for layer in getattr(model, "layers", [])
                  if not isinstance(layer, keras.layers.InputLayer)), None)
    if isinstance(first, keras.layers.Rescaling):
        scale, offset = first.scale, first.offset
        if np.ndim(scale) == 0 and np.ndim(offset) == 0 and float(scale) > 0:
            if float(offset) == 0.0:
                return 0.0, round(1.0 / float(scale), 6)
            if float(offset) == -1.0:
                return 0.0, round(2.0 / float(scale), 6)
    return 0.0, 1.0


def input_grid(x) -> tuple:
    """The grid GradMix masks: ``(H, W)`` of images, ``(T,)`` of sequences
    and of token ids, ``(D, H, W)`` of volumes."""
    return tuple(token_ids(x).shape[1:]) if is_token_input(x) else tuple(x.shape[1:-1])


def batch_size(x):
    """The batch size of an input (a tensor, or a dict of token inputs)."""
    return ops.shape(token_ids(x) if is_token_input(x) else x)[0]


def is_array(value) -> bool:
    return isinstance(value, np.ndarray) or keras.ops.is_tensor(value)


def num_rows(x) -> int:
    """The number of rows (images, sequences) of an array or a token dict."""
    return len(token_ids(x) if is_token_input(x) else x)


def rows(x, start: int, stop: int):
    """Rows ``start:stop`` of an input: an array or a structure of arrays (a
    token dict, ``(x, y, sample_weight)``); other leaves (None) are kept."""
    return keras.tree.map_structure(lambda a: a[start:stop] if is_array(a) else a, x)


def check_image_batch(x) -> None:
    """One input over a grid, channels last, the grid's size known: images
    ``(batch, height, width, channels)``, sequences ``(batch, steps,
    channels)`` or volumes ``(batch, depth, height, width, channels)``; or
    token ids ``(batch, tokens)`` (:mod:`keras_gradmix.token_ids`)."""
    if is_token_input(x):
        ids = token_ids(x)
        if len(ids.shape) != 2 or ids.shape[1] is None:
            raise ValueError(
                f"GradMix takes token ids of shape (batch, tokens), the length known when the "
                f"step is traced (pad to one length); got shape {tuple(ids.shape)}.")
        return
    if isinstance(x, (list, tuple, dict)):
        raise ValueError(
            "GradMixModel needs a single image input (batch, height, width, "
            f"channels), or token ids (a dict of them needs a 'token_ids' entry); got "
            f"{type(x).__name__}{f' of {sorted(x)}' if isinstance(x, dict) else ''}."
        )
    if len(x.shape) not in (3, 4, 5):
        raise ValueError(
            f"GradMixModel needs images of shape (batch, height, width, "
            f"channels), channels last (or sequences (batch, steps, channels), volumes "
            f"(batch, depth, height, width, channels)); got shape {tuple(x.shape)}"
            f"{'; token ids (batch, tokens) must be integers' if len(x.shape) == 2 else ''}."
        )
    if any(s is None for s in x.shape[1:-1]):
        raise ValueError(
            f"GradMixModel needs batches whose image height and width are "
            f"known when the step is traced; got shape {tuple(x.shape)}. "
            f"Resize images to one size (or set the dataset's element_spec)."
        )
