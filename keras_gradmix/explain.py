"""Attribution maps of any Keras classifier in one call, for inspection.

What pytorch-grad-cam's ``GradCAM(model, target_layers)(input_tensor=x)`` and
tf-keras-vis' ``Gradcam`` give a user: maps of a trained (or untrained) model,
without a training wrapper or compiling (an
:class:`~keras_gradmix.Attributor`, in batches). The maps are the ones GradMix
would mask during training with the same options.

Examples:

```python
maps = keras_gradmix.attribution_maps(model, x[:8], y[:8], layer="conv2")  # (8, H, W)
maps = keras_gradmix.attribution_maps(model, x[:8])   # predicted class, layer chosen for you
```
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from keras_gradmix.attributor import Attributor
from keras_gradmix.inputs import num_rows, rows
from keras_gradmix.token_ids import is_token_input, token_ids

SETTINGS = ("normalize", "output", "prefix_tokens", "token_grid")


def attribution_maps(
    model: keras.Model,
    images,
    labels=None,
    layer: str | Sequence[str] | None = None,
    attribution: str = "layercam",
    *,
    batch_size: int = 32,
    **options: Any,
) -> np.ndarray:
    """Attribution maps of ``images`` at their own resolution, each in [0, 1].

    Runs eagerly in inference mode (BatchNorm uses its running statistics,
    dropout is off) and changes nothing in ``model``.

    Args:
        model: a Keras classifier with one image input ``(B, H, W, C)`` (or
            a sequence ``(B, T, C)``, a volume ``(B, D, H, W, C)``, token ids
            ``(B, T)``) and one output of class scores, built or not.
        images: ``(N, H, W, C)`` array or tensor (``(N, T, C)``, ``(N, D, H,
            W, C)``, integer ``(N, T)`` or a dict with ``"token_ids"``).
        labels: class indices ``(N,)`` or one-hot ``(N, K)``: the map of each
            image's true class. None: the map of the predicted class.
        layer: the attributed layer's name or path (a list for the summed
            multi-layer map); None picks the last spatial feature map, as
            :class:`~keras_gradmix.GradMixModel` does without data.
        attribution: ``"layercam"``, ``"gradcam"`` or ``"gradcam++"``.
        batch_size: images per forward pass.
        **options: the other :class:`~keras_gradmix.Attributor` settings:
            ``normalize=``, ``output=``, ``prefix_tokens=``, ``token_grid=``,
            ``target=`` (``"label"`` or ``"prediction"``).

    Returns:
        ``(N, H, W)`` float32 NumPy array (``(N, T)``, ``(N, D, H, W)``);
        for token ids the map covers padding too (it is never masked).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    target = options.pop("target", "label" if labels is not None else "prediction")
    if target not in ("label", "prediction"):
        raise ValueError(f"target must be 'label' or 'prediction' here, got {target!r}.")
    if target == "label" and labels is None:
        raise ValueError("target='label' needs labels; pass labels=, or target='prediction'.")
    unknown = sorted(set(options) - set(SETTINGS))
    if unknown:
        raise ValueError(f"attribution_maps got unknown option(s) {unknown}; the maps take "
                         f"{list(SETTINGS)} besides layer=, attribution= and target=.")
    attributor = Attributor(model, layer, attribution, target=target, **options)
    images = keras.tree.map_structure(keras.ops.convert_to_numpy, images)
    tokens = is_token_input(images)
    count = num_rows(images)
    if (not tokens and images.ndim not in (3, 4, 5)) or count == 0:
        raise ValueError(
            f"attribution_maps needs a non-empty batch of images (batch, height, width, "
            f"channels), channels last (or sequences (batch, steps, channels), volumes "
            f"(batch, depth, height, width, channels), token ids (batch, tokens)); got shape "
            f"{np.shape(token_ids(images) if tokens else images)}.")

    # "prediction" ignores the labels: zeros stand in for absent ones.
    labels = np.zeros(count, "int32") if labels is None else keras.ops.convert_to_numpy(labels)
    if len(labels) != count:
        raise ValueError(f"Got {count} images but {len(labels)} labels.")
    if target == "label":
        _check_labels(np.asarray(labels), model(rows(images, 0, 1), training=False))
    maps = []
    for start in range(0, count, batch_size):
        maps.append(keras.ops.convert_to_numpy(
            attributor(rows(images, start, start + batch_size), labels[start:start + batch_size])))
    return np.concatenate(maps)


def _check_labels(labels, outputs) -> None:
    """Labels that name a class of the model: class indices in ``[0, K)``
    (``{0, 1}`` for one logit), or one-hot rows of width ``K``; else the map
    would be of no class at all."""
    outputs = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    classes = int(outputs.shape[-1])
    count = max(classes, 2)
    if labels.ndim == 2 and labels.shape[1] > 1:
        if labels.shape[1] != classes:
            raise ValueError(
                f"The one-hot labels have {labels.shape[1]} columns but the model has {classes} "
                f"classes. Pass labels of width {classes}, or class indices.")
        return
    values = labels.ravel()
    if not (np.isfinite(values).all() and (values == np.round(values)).all()
            and values.min() >= 0 and values.max() < count):
        bad = values[~(np.isfinite(values) & (values == np.round(values)) & (values >= 0)
                       & (values < count))][:3]
        raise ValueError(
            f"labels must be class indices in [0, {count}) of this {classes}-output model; got "
            f"{bad.tolist()}: their maps would be of no class. Remap or drop those images, or "
            f"pass labels=None for the predicted class's map.")
