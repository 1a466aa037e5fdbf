"""Does a layer's attribution point at what the model uses? A deletion check.

For each image a box of ``area`` is blanked at the map's peak, at a random
place and at the map's minimum, and the drop of the true-class probability
is measured. A faithful map gives ``peak > random > low``: deleting what the
map calls important hurts most (the deletion metric of Petsiuk et al. 2018,
RISE, at one box size). Use it to choose ``layer=`` and ``attribution=``:

```python
drops = keras_gradmix.faithfulness(model, x_val[:512], y_val[:512], layer="conv2")
drops["peak"], drops["random"], drops["low"]   # mean drops
```

References:
    - Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation
      of Black-box Models". BMVC 2018 (deletion and insertion).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from keras_gradmix.explain import attribution_maps
from keras_gradmix.masks import box_masks, placement_scores
from keras_gradmix.mixing import apply_fill, validate_fill

PLACES = ("peak", "random", "low")


def _probabilities(model, images, batch_size, output) -> np.ndarray:
    """Softmax of the model's outputs (``output="logits"``) or the outputs."""
    out = []
    for start in range(0, len(images), batch_size):
        values = keras.ops.convert_to_numpy(model(images[start:start + batch_size], training=False))
        out.append(np.asarray(values, np.float64))
    values = np.concatenate(out)
    if output == "probabilities":
        return values
    values = values - values.max(axis=1, keepdims=True)
    return np.exp(values) / np.exp(values).sum(axis=1, keepdims=True)


def faithfulness(
    model: keras.Model,
    x,
    y,
    layer: str | Sequence[str] | None = None,
    area: float = 0.25,
    attribution: str = "layercam",
    *,
    fill: float = 0.0,
    output: str = "logits",
    batch_size: int = 32,
    seed: int = 0,
    **options: Any,
) -> dict:
    """Mean drop of the true-class probability when a box is blanked at the
    map's peak, at a random place and at the map's minimum.

    Runs in inference mode and changes nothing in ``model``.

    Args:
        model: a Keras classifier, one image input ``(B, H, W, C)``.
        x: ``(N, H, W, C)`` images.
        y: class indices ``(N,)`` or one-hot ``(N, K)``: the true classes,
            whose maps and probabilities are used.
        layer, attribution, **options: as in
            :func:`~keras_gradmix.attribution_maps` (None picks the layer).
        area: the box's share of the image, in (0, 1]; the box is the one
            GradMix masks (:func:`~keras_gradmix.box_masks`), clipped at
            the border.
        fill: the constant pixel value of the blanked box (0: black).
        output: ``"logits"`` (softmax is applied) or ``"probabilities"``
            (the model ends in a softmax).
        batch_size: images per forward pass.
        seed: the random places' seed.

    Returns:
        ``{"peak", "random", "low"}``: mean drops (clean minus blanked
        probability; a negative drop is a rise); ``"per_image"``: the same
        keys, ``(N,)`` arrays; ``"clean"``: ``(N,)`` true-class probabilities
        of the clean images.
    """
    if not 0.0 < float(area) <= 1.0:
        raise ValueError(f"area must be in (0, 1], got {area!r}.")
    if output not in ("logits", "probabilities"):
        raise ValueError(f"output must be 'logits' or 'probabilities', got {output!r}.")
    fill = validate_fill(fill)
    if isinstance(fill, str):
        raise ValueError(f"faithfulness blanks with a constant fill (a number), got {fill!r}.")
    images = np.asarray(keras.ops.convert_to_numpy(x), np.float32)
    labels = np.asarray(keras.ops.convert_to_numpy(y))
    maps = attribution_maps(model, images, labels, layer, attribution, batch_size=batch_size, **options)
    labels = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(int).ravel()
    rows = np.arange(len(images))
    clean = _probabilities(model, images, batch_size, output)[rows, labels]
    draw = np.random.default_rng(seed).uniform(size=maps.shape).astype(np.float32)
    per_image = {}
    for place in PLACES:
        mask, _ = box_masks(placement_scores(maps, place, draw), float(area))
        blanked = keras.ops.convert_to_numpy(apply_fill(images, mask, fill))
        per_image[place] = clean - _probabilities(model, blanked, batch_size, output)[rows, labels]
    return {**{place: float(per_image[place].mean()) for place in PLACES},
            "per_image": per_image, "clean": clean}
