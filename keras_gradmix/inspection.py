"""One look at the first batch, eagerly, before any weight changes.

``GradMixModel.fit`` (and ``train_on_batch``) call :func:`inspect_batch` on
the first batch (read without consuming the user's data,
:func:`first_batch`; an empty dataset is an error here):

* the inputs are checked in NumPy, so every backend says the same
  (``check_inputs=False`` skips it): pixels finite and inside ``value_range``,
  labels numbers, class indices inside ``[0, classes)``, one-hot rows that are
  probabilities, sample weights finite and non-negative;
* ``layer=None`` is resolved to the last candidate layer whose attribution
  maps are not all flat;
* an attributed layer whose maps are all flat (nothing would be masked, e.g.
  the class-token trap of transformers) is named once, with the layer to use.
"""

from __future__ import annotations

import logging
import warnings

import keras
import numpy as np
from keras import ops

from keras_gradmix import compat
from keras_gradmix.attribution import METHODS
from keras_gradmix.inputs import check_image_batch, input_grid, is_array, rows
from keras_gradmix.objectives import Classification, attributed_output
from keras_gradmix.tap import LayerTap, SmallMapError, candidate_layers, pick_layer, spatial_candidates
from keras_gradmix.token_ids import is_token_input, token_ids

logger = logging.getLogger("keras_gradmix")


def inspect_batch(gm, x, y, sample_weight=None):
    """Checks the batch and resolves the attributed layer (see the module)."""
    if not _is_text(x) and not isinstance(x, (list, tuple, dict)) and len(x.shape) and x.shape[0] == 0:
        raise ValueError(
            f"GradMix: the data has no images (a first batch of shape {tuple(x.shape)}); "
            f"training needs at least one. Check that the arrays or the dataset are not empty "
            f"(e.g. a filter that kept nothing).")
    x = gm.objective.prepare_inputs(x if _is_text(x) else keras.tree.map_structure(ops.convert_to_tensor, x))
    if gm.options.check_inputs:
        check_inputs(gm, x, y, sample_weight)
    if gm.layer is None:
        _, tap, flat = flat_layers(gm, x, y)
        gm.layer = pick_layer(tap, input_grid(x), gm.model.name, gm.options, flat)
    elif not getattr(gm, "_flat_warned", False) and all_flat(maps := checked_layer_maps(gm, x, y)):
        warnings.warn(f"GradMix: every attribution map of layer={gm.layer!r} is flat on the "
                      f"first batch, so nothing will be masked. {flat_cause(gm, x, y, maps)}",
                      stacklevel=4)
        gm._flat_warned = True


def checked_layer_maps(gm, x, y) -> list:
    """The attributed layers' maps of ``x``; a layer with 1x1 maps at this
    input size is named with the last layer whose maps are larger."""
    try:
        return layer_maps(gm, x, y, gm.layer_paths)
    except SmallMapError as error:
        grid = input_grid(x)
        one = "x".join("1" * len(grid))
        candidates, tap = spatial_layers(gm, x)
        better = (f"The last layer whose maps are larger is {candidates[-1]!r} "
                  f"({'x'.join(map(str, tap.outputs[candidates[-1]][0].shape[1:-1]))}): attribute "
                  f"it" if candidates else f"No layer has maps larger than {one}: use larger images")
        raise ValueError(
            f"Layer {error.path!r} gives {one} maps at {'x'.join(map(str, grid))} inputs: one value per "
            f"image, so there is no place to mask. {better}, or feed larger images (each "
            f"halving of the resolution in the model halves the map).") from None


def shape_choice(gm, x) -> str:
    """What ``layer=None`` resolves to without looking at maps (a custom loop's
    first step): the last spatial map of ``x``'s forward, not stored."""
    _, tap = spatial_layers(gm, x)
    return pick_layer(tap, input_grid(x), gm.model.name, gm.options)


def spatial_layers(gm, x) -> tuple[list[str], LayerTap]:
    """The candidate layers with genuine spatial maps of ``x`` (call order),
    and the tap that recorded them."""
    gm.check_step_ready(x, training=False)
    with LayerTap(candidate_layers(gm.model)) as tap:
        gm(x, training=False)
    return spatial_candidates(tap, input_grid(x), gm.options), tap


def layer_maps(gm, x, y, paths) -> list:
    """Each layer's own attribution maps of the batch ``x``, inference mode."""
    activations, gradients = gm.attribute(x, y, list(paths))
    size = input_grid(x)
    method = METHODS[gm.options.attribution]
    return [method(*gm.feature_maps([a, g], size)) for a, g in zip(activations, gradients)]


def flat_layers(gm, x, y) -> tuple[list[str], LayerTap, set]:
    """The candidate layers with spatial maps of ``x`` (call order), the tap
    that recorded them, and those whose attribution maps are all flat."""
    candidates, tap = spatial_layers(gm, x)
    maps = layer_maps(gm, x, y, candidates) if candidates else []
    return candidates, tap, {path for path, m in zip(candidates, maps) if all_flat([m])}


def flat_cause(gm, x, y, maps) -> str:
    """Why every map is flat, and what to do: blank images, an overflow, or a
    layer the score's gradient does not reach."""
    pixels = np.asarray(ops.convert_to_numpy(token_ids(x) if is_token_input(x) else x), np.float64)
    pixels = pixels.reshape(len(pixels), -1)
    if (pixels.max(axis=1) == pixels.min(axis=1)).all():
        return ("Every input of the batch is constant (e.g. all zeros): there is nothing to "
                "attribute. Check the data pipeline (decoding, scaling, a mask applied twice).")
    if not all(np.isfinite(ops.convert_to_numpy(m)).all() for m in maps):
        return ("The maps are not finite: the attribution overflowed (e.g. float16 with a large "
                "loss scale, or huge activations). Lower the LossScaleOptimizer's initial_scale "
                "or train in float32.")
    candidates, _, flat = flat_layers(gm, x, y)
    better = next((p for p in reversed(candidates) if p not in flat), None)
    hint = (f"attribute layer={better!r} (the last layer whose maps are not flat)"
            if better else "no layer of the model gives non-flat maps on it")
    return (f"The score's gradient does not reach those outputs (e.g. a transformer pooled by "
            f"its class token leaves the last block's patch tokens without gradient); {hint}.")


def all_flat(maps) -> bool:
    """Whether every map of every image is constant (no peak anywhere)."""
    for m in maps:
        m = ops.convert_to_numpy(m).reshape(len(m), -1)
        if (m.max(axis=1) > m.min(axis=1)).any():
            return False
    return True


# ------------------------------------------------------------ the first batch
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
    a ``keras.utils.PyDataset`` its item 0; a PyTorch ``DataLoader`` or a Grain
    dataset (``MapDataset``, ``IterDataset``, ``DataLoader``, where Keras'
    ``fit`` takes them: 3.15 does, 3.10 does not) the first batch of a fresh iterator. Returns ``(None, None, None, x)`` for anything else;
    raises a ValueError for an empty dataset.
    """
    if x is None:
        return None, None, None, x
    if is_array(x) or (isinstance(x, (list, tuple, dict)) and keras.tree.flatten(x)
                        and all(is_array(a) for a in keras.tree.flatten(x))):
        size = batch_size or 32
        return rows(x, 0, size), rows(y, 0, size), rows(sample_weight, 0, size), x
    batch, known = None, True
    if type(x).__module__.startswith("tensorflow") and hasattr(x, "take") and hasattr(x, "element_spec"):
        batch = next(iter(x.take(1)), None)
    elif isinstance(x, keras.utils.PyDataset):
        batch = x[0] if len(x) else None
    elif type(x).__name__ == "DataLoader" and type(x).__module__.startswith("torch"):
        batch = next(iter(x), None)
    elif type(x).__module__.startswith("grain"):  # re-iterable: a fresh iterator
        batch = next(iter(x), None)
    elif hasattr(x, "__next__"):  # one pass: read the first batch, hand on the rest too
        batch = next(x, None)
        if batch is not None:
            x = _chain(batch, x)
    else:
        known = False
    if batch is None and known:
        raise ValueError(
            f"GradMix: the training data ({type(x).__name__}) is empty: it gave no first "
            f"batch. Check the dataset (e.g. a filter or take() that kept nothing).")
    if batch is None:
        return None, None, None, x
    if isinstance(batch, list):
        batch = tuple(batch)
    bx, by, bsw = keras.utils.unpack_x_y_sample_weight(batch)
    return bx, by, bsw, x



# ------------------------------------------------------------------ inputs
def _is_text(value) -> bool:
    if isinstance(value, dict):
        return any(_is_text(v) for v in value.values())
    array = np.asarray(value) if not keras.ops.is_tensor(value) else None
    if array is None:
        dtype = str(getattr(value, "dtype", ""))
        return "string" in dtype or dtype in ("object", "str")
    return array.dtype.kind in "OSU"


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def check_inputs(gm, x, y, sample_weight=None):
    """Raises a ValueError naming the problem and the fix for a bad batch."""
    if _is_text(x):
        raise ValueError("GradMix: the inputs are strings; decode images to numbers first "
                         "(e.g. keras.utils.load_img or tf.io.decode_image), tokenize text "
                         "(e.g. a KerasHub task's preprocessor) to token ids.")
    check_image_batch(x)  # the input's kind first: its checks depend on it
    if is_token_input(x):
        ids = _numpy(token_ids(x))
        if ids.size and ids.min() < 0:
            raise ValueError(f"GradMix: the first batch has negative token ids (down to "
                             f"{ids.min()}); ids index a vocabulary from 0.")
    else:
        _check_pixels(gm, x)
    if sample_weight is not None:
        weights = _numpy(sample_weight).astype(np.float64)
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("GradMix: sample weights must be finite and >= 0; the first "
                             f"batch has values in [{np.nanmin(weights):.4g}, "
                             f"{np.nanmax(weights):.4g}] (NaN: {np.isnan(weights).any()}).")
    if isinstance(gm.objective, Classification) and y is not None:
        check_labels(gm, x, y)


def _check_pixels(gm, x):
    """Pixels finite and inside ``value_range``."""
    pixels = _numpy(x).astype(np.float64)
    bad = int((~np.isfinite(pixels)).sum())
    if bad:
        raise ValueError(
            f"GradMix: the first batch has {bad} non-finite pixel values (NaN or inf); "
            f"they would spread into the loss. Clean the data first (e.g. np.nan_to_num).")
    low, high = gm.options.value_range
    raw = pixels
    if gm.options.normalization is not None:  # back to raw pixels
        mean, std = (np.asarray(v) for v in gm.options.normalization)
        raw = pixels * std + mean
    tolerance = 1e-3 * (high - low)
    if raw.min() < low - tolerance or raw.max() > high + tolerance:
        seen = f"[{raw.min():.4g}, {raw.max():.4g}]"
        raise ValueError(
            f"GradMix: the first batch's pixels span {seen} but value_range is "
            f"({low:g}, {high:g}): the noise is drawn in value_range, so it would not "
            f"look like your pixels. Fix: {_range_hint(gm.options, raw, low, high)}.")


def _range_hint(options, raw, low, high) -> str:
    """What to pass for pixels outside ``value_range``; following it must not
    lead to another range error."""
    unit = -1 - 1e-3 <= raw.min() and raw.max() <= 1 + 1e-3
    if options.normalization is None and raw.min() < 0 <= low and not unit and raw.max() < 20:
        return ("the images look standardised, (pixels - mean) / std: pass "
                "normalization=(mean, std), the statistics they were standardised with, e.g. "
                "normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) for ImageNet "
                "statistics of pixels in [0, 1], and value_range=(0, 255) as well if the mean "
                "and std are in 0-255 units; or pass value_range=("
                f"{raw.min():.4g}, {raw.max():.4g}) to draw the noise in the images' own range")
    if raw.max() > 2 and high <= 1 and raw.min() >= 0:
        return f"pass value_range=(0, 255), or scale the images to ({low:g}, {high:g}) (e.g. x / 255)"
    if options.normalization is None and unit and raw.min() < 0:
        return "pass value_range=(-1, 1), the range of images scaled to [-1, 1]"
    return (f"pass value_range=({raw.min():.4g}, {raw.max():.4g}) (the range of your "
            f"images{', before normalization' if options.normalization else ''})")


def host_labels(gm, y) -> bool:
    """Whether ``y`` are labels on the host a classification step takes
    (checking them reads nothing from the device)."""
    return (isinstance(gm.objective, Classification) and y is not None
            and all(isinstance(v, (np.ndarray, list, tuple, int, float, np.generic))
                    for v in keras.tree.flatten(y)))


def check_labels(gm, x, y, batch: str = "the first batch"):
    """The label checks of :func:`check_inputs` alone, on the host; the class
    count comes from one forward of one image, once per model (``train_on_batch``
    runs them on every call: no attribution pass, no read of device values)."""
    if any(_is_text(v) for v in keras.tree.flatten(y)):
        raise ValueError(
            "GradMix: the labels are strings; map them to integer class indices first, "
            "e.g. with keras.layers.StringLookup(num_oov_indices=0) or a dict.")
    probe = getattr(gm, "_label_probe", None)  # one image's outputs: their structure and widths
    if probe is None:
        probe = gm._label_probe = gm(rows(x, 0, 1), training=False)
    labels, pred = attributed_output(gm.model, gm.options.output, y, probe)
    classes = pred.shape[-1]
    labels = _numpy(labels)
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
        raise ValueError(f"GradMix: labels of dtype {labels.dtype} are not numbers.")
    if not np.isfinite(labels.astype(np.float64)).all():
        raise ValueError(f"GradMix: {batch} has non-finite labels (NaN or inf).")
    sparse = labels.ndim == 1 or (labels.ndim == 2 and labels.shape[-1] == 1 and classes != 1)
    if classes == 1:
        if not np.isin(labels, (0, 1)).all() and (labels.min() < 0 or labels.max() > 1):
            raise ValueError(
                f"GradMix: a single-logit binary classifier takes labels in [0, 1]; "
                f"{batch} has labels from {labels.min():g} to {labels.max():g}.")
        return
    loss = compat.user_loss(gm, gm.options.output)
    loss = "" if loss is None else compat.loss_name(loss)
    if sparse and loss.startswith("categorical"):
        raise ValueError(
            f"GradMix: the labels are class indices (shape {labels.shape}) but the loss is "
            f"{loss}, which takes one-hot labels. Compile with a sparse loss (e.g. "
            f"keras.losses.SparseCategoricalCrossentropy), or one-hot the labels "
            f"(keras.ops.one_hot(y, {classes})).")
    if not sparse and labels.ndim == 2 and labels.shape[-1] == classes and loss.startswith("sparse_"):
        raise ValueError(
            f"GradMix: the labels are one-hot (shape {labels.shape}) but the loss is {loss}, "
            f"which takes class indices. Compile with {loss[len('sparse_'):]} (e.g. "
            f"keras.losses.CategoricalCrossentropy), or pass the indices (y.argmax(axis=-1)).")
    if sparse and labels.min() < 0:
        raise ValueError(
            f"GradMix: labels must be class indices in [0, {classes}); {batch} has "
            f"negative labels (down to {labels.min():g}). Class indices start at 0: remap "
            f"them (e.g. np.unique(y, return_inverse=True)[1]), or drop the rows of an "
            f"'unknown' label such as -1 from the training data.")
    if sparse:
        if labels.min() < 0 or labels.max() >= classes or (labels != np.round(labels)).any():
            raise ValueError(
                f"GradMix: labels must be class indices in [0, {classes}) for a model with "
                f"{classes} outputs; {batch} has labels from {labels.min():g} to "
                f"{labels.max():g}. Remap them (e.g. the known classes of an open-set "
                f"split to 0..{classes - 1}) or give the model {int(labels.max()) + 1} outputs.")
    elif labels.ndim == 2 and labels.shape[-1] == classes:
        if labels.min() < 0 or labels.max() > 1:
            raise ValueError(
                f"GradMix: one-hot (or soft, or multi-hot) labels must lie in [0, 1]; "
                f"{batch} has values from {labels.min():g} to {labels.max():g}.")
        sums = labels.sum(axis=1)
        multi_hot = np.isin(labels, (0, 1)).all()
        if not multi_hot and not np.allclose(sums, 1.0, atol=1e-3):
            warnings.warn(
                f"GradMix: soft labels whose rows sum to [{sums.min():.3g}, {sums.max():.3g}] "
                f"rather than 1; target='label' weighs each class by its label, so the "
                f"attributed score is scaled per image. A warning, not an error: mixed "
                f"labels (e.g. from MixUp) are fine if that is what you meant.", stacklevel=5)
