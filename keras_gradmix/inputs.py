"""The space of the images the user feeds, and the first batch ``fit`` sees.

GradMix masks images as fed: raw pixels in ``value_range``. When that range
is not given it is read from the model: a KerasHub task applies its
preprocessor (an image converter that resizes and rescales raw ``[0, 255]``
images) in its own ``fit``/``predict``, not in ``call``, so ``GradMixModel``
runs the converter as the first step of its forward instead, and masks in raw
pixels; a model that starts with ``Rescaling(1/255)`` (to [0, 1]) or
``Rescaling(1/127.5, offset=-1)`` (to [-1, 1]) is fed ``[0, 255]`` pixels.

GradMix also looks at the first batch once per ``fit`` (eagerly, before any
weight changes) to resolve ``layer=None`` from real attribution maps.
"""

from __future__ import annotations

import keras
import numpy as np


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


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or keras.ops.is_tensor(value)


def _head(value, size):
    """The first ``size`` rows of an array or a structure of arrays."""
    return keras.tree.map_structure(lambda a: a[:size] if _is_array(a) else a, value)


def _chain(first, rest):
    """A generator (what Keras accepts) of ``first`` and then ``rest``."""
    yield first
    yield from rest


def first_batch(x=None, y=None, sample_weight=None, batch_size=None):
    """``(x, y, sample_weight, data)`` of the first batch, and the data to pass
    on to ``fit`` (unchanged, or an equivalent iterator when the data is a
    one-pass Python iterator or generator, whose first batch had to be read).

    Arrays give their first ``batch_size`` rows (32 by default, as ``fit``);
    a ``tf.data.Dataset`` its first element (a fresh iterator);
    a ``keras.utils.PyDataset`` its item 0; a PyTorch ``DataLoader`` the first
    batch of a fresh iterator. Returns ``(None, None, None, x)`` for anything else.
    """
    if x is None:
        return None, None, None, x
    if _is_array(x) or (isinstance(x, (list, tuple, dict)) and keras.tree.flatten(x)
                        and all(_is_array(a) for a in keras.tree.flatten(x))):
        size = batch_size or 32
        return _head(x, size), _head(y, size), _head(sample_weight, size), x
    batch = None
    if type(x).__module__.startswith("tensorflow") and hasattr(x, "take") and hasattr(x, "element_spec"):
        batch = next(iter(x.take(1)), None)
    elif isinstance(x, keras.utils.PyDataset):
        batch = x[0] if len(x) else None
    elif type(x).__name__ == "DataLoader" and type(x).__module__.startswith("torch"):
        batch = next(iter(x), None)
    elif hasattr(x, "__next__"):  # one pass: read the first batch, hand on the rest too
        batch = next(x, None)
        if batch is not None:
            x = _chain(batch, x)
    if batch is None:
        return None, None, None, x
    if isinstance(batch, list):
        batch = tuple(batch)
    bx, by, bsw = keras.utils.unpack_x_y_sample_weight(batch)
    return bx, by, bsw, x


def check_image_batch(x) -> None:
    """One image input ``(batch, height, width, channels)``, height and width known."""
    if isinstance(x, (list, tuple, dict)):
        raise ValueError(
            "GradMixModel needs a single image input (batch, height, width, "
            f"channels); got {type(x).__name__}."
        )
    if len(x.shape) != 4:
        raise ValueError(
            f"GradMixModel needs images of shape (batch, height, width, "
            f"channels), channels last; got shape {tuple(x.shape)}."
        )
    if x.shape[1] is None or x.shape[2] is None:
        raise ValueError(
            f"GradMixModel needs batches whose image height and width are "
            f"known when the step is traced; got shape {tuple(x.shape)}. "
            f"Resize images to one size (or set the dataset's element_spec)."
        )
