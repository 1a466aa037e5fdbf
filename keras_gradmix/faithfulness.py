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

import math
import warnings
from typing import Any, Sequence

import keras
import numpy as np

from keras_gradmix.explain import attribution_maps
from keras_gradmix.inputs import num_rows, rows
from keras_gradmix.masks import place_masks, placement_scores
from keras_gradmix.mixing import apply_fill, validate_fill
from keras_gradmix.token_ids import is_token_input, token_ids, valid_positions, with_token_ids

PLACES = ("peak", "random", "low")
OUTPUTS = ("auto", "logits", "probabilities")


def _outputs(model, images, batch_size) -> np.ndarray:
    out = []
    for start in range(0, num_rows(images), batch_size):
        values = keras.ops.convert_to_numpy(model(rows(images, start, start + batch_size),
                                                  training=False))
        out.append(np.asarray(values, np.float64))
    return np.concatenate(out)


def _are_probabilities(values) -> bool:
    """Every row in [0, 1] and summing to 1: a softmax's output."""
    return bool(values.shape[1] > 1 and (values >= 0).all() and (values <= 1).all()
                and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


def _softmax(values) -> np.ndarray:
    values = values - values.max(axis=1, keepdims=True)
    return np.exp(values) / np.exp(values).sum(axis=1, keepdims=True)


def _resolve_output(output, clean_outputs) -> str:
    """``output`` checked against what the model gives: a softmax model's
    output with ``"logits"`` would be softmaxed twice (flat drops)."""
    probabilities = _are_probabilities(clean_outputs)
    if output == "auto":
        return "probabilities" if probabilities else "logits"
    if output == "logits" and probabilities:
        raise ValueError(
            "output='logits', but the model's outputs are probabilities (every row in [0, 1], "
            "summing to 1: it ends in a softmax); a second softmax would flatten every drop. "
            "Pass output='probabilities' (or the default 'auto').")
    if output == "probabilities" and not probabilities:
        raise ValueError(
            "output='probabilities', but the model's outputs are not probabilities (rows not "
            "in [0, 1] or not summing to 1): they look like logits. Pass output='logits' (or "
            "the default 'auto').")
    return output


# Student's t 0.975 quantiles for few degrees of freedom, where the expansion below is poor.
_T975 = {1: 12.706204736174694, 2: 4.302652729749462, 3: 3.182446305283708, 4: 2.776445105197793}


def t_quantile(dof: int) -> float:
    """Student's t 0.975 quantile, for 95 % intervals, without SciPy: a table
    below 5 degrees of freedom, else the Cornish-Fisher expansion around the
    normal's (within 0.003 at 5, 3e-4 at 9, 2e-6 at 30)."""
    if dof in _T975:
        return _T975[dof]
    z, v = 1.959963984540054, float(dof)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def mean_interval(values) -> tuple[float, float]:
    """The 95 % t-interval of the mean of ``values`` (``(nan, nan)`` for one)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    half = t_quantile(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def faithfulness(
    model: keras.Model,
    x,
    y,
    layer: str | Sequence[str] | None = None,
    area: float = 0.25,
    attribution: str = "layercam",
    *,
    fill: float = 0.0,
    output: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    **options: Any,
) -> dict:
    """Mean drop of the true-class probability when a box is blanked at the
    map's peak, at a random place and at the map's minimum.

    The three boxes have the same area, exactly (to the pixel grid): a box
    that would cross the border is shifted inside the image, as GradMix's
    boxes are. Runs in inference mode and changes nothing in ``model``.

    Warns (``UserWarning``) when the answer says nothing: the model is near
    chance on ``x`` (mean clean true-class probability below ``1/K + 0.1 (1 -
    1/K)``), or the 95 % interval of ``peak - random`` contains 0 (or there is
    one image): pass more images.

    Args:
        model: a Keras classifier, one image input ``(B, H, W, C)`` (or a
            sequence, volume or token-id input, as ``attribution_maps``).
        x: ``(N, H, W, C)`` images (or sequences, volumes, token ids: a span
            of ``area`` of each sequence's selectable tokens is replaced by
            the id ``fill``; ``unselectable_token_ids=`` as GradMix's, ``(0,)``).
        y: class indices ``(N,)`` or one-hot ``(N, K)``: the true classes,
            whose maps and probabilities are used.
        layer, attribution, **options: as in
            :func:`~keras_gradmix.attribution_maps` (None picks the layer).
        area: the box's share of the image, in (0, 1]; the box is the one
            GradMix masks (:func:`~keras_gradmix.box_masks`).
        fill: the constant pixel value of the blanked box (0: black).
        output: ``"auto"`` (probabilities if the outputs are: every row in
            [0, 1] and summing to 1; else logits, softmaxed), ``"logits"`` or
            ``"probabilities"`` (an error if the outputs say otherwise).
        batch_size: images per forward pass.
        seed: the random places' seed.

    Returns:
        ``{"peak", "random", "low"}``: mean drops (clean minus blanked
        probability; a negative drop is a rise); ``"peak - random"``: the mean
        per-image difference; ``"std"``: per-image standard deviations of the
        same four; ``"interval"``: their 95 % t-intervals ``(low, high)``;
        ``"per_image"``: the per-image drops, ``(N,)`` arrays; ``"clean"``:
        ``(N,)`` true-class probabilities of the clean images.
    """
    if not 0.0 < float(area) <= 1.0:
        raise ValueError(f"area must be in (0, 1], got {area!r}.")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
    fill = validate_fill(fill)
    if isinstance(fill, str):
        raise ValueError(f"faithfulness blanks with a constant fill (a number), got {fill!r}.")
    unselectable = options.pop("unselectable_token_ids", (0,))
    images = keras.tree.map_structure(lambda a: np.asarray(keras.ops.convert_to_numpy(a)), x)
    tokens = is_token_input(images)  # ids: boxes are spans of selectable tokens
    valid = keras.ops.convert_to_numpy(valid_positions(images, unselectable)) if tokens else None
    if not tokens:
        images = images.astype(np.float32)
    labels = np.asarray(keras.ops.convert_to_numpy(y))
    maps = attribution_maps(model, images, labels, layer, attribution, batch_size=batch_size, **options)
    labels = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(int).ravel()
    rows = np.arange(len(labels))
    outputs = _outputs(model, images, batch_size)
    output = _resolve_output(output, outputs)

    def probabilities(values):
        return values if output == "probabilities" else _softmax(values)

    clean = probabilities(outputs)[rows, labels]
    draw = np.random.default_rng(seed).uniform(size=maps.shape).astype(np.float32)
    per_image = {}
    for place in PLACES:
        mask, _ = place_masks("box", placement_scores(maps, place, draw, valid), float(area), valid=valid)
        if tokens:
            blanked = with_token_ids(images, keras.ops.convert_to_numpy(apply_fill(token_ids(images), mask, fill)))
        else:
            blanked = keras.ops.convert_to_numpy(apply_fill(images, mask, fill))
        per_image[place] = clean - probabilities(_outputs(model, blanked, batch_size))[rows, labels]
    per_image["peak - random"] = per_image["peak"] - per_image["random"]
    result = {key: float(v.mean()) for key, v in per_image.items()}
    result["std"] = {key: float(v.std(ddof=1)) if len(v) > 1 else math.nan
                     for key, v in per_image.items()}
    result["interval"] = {key: mean_interval(v) for key, v in per_image.items()}
    _warn_if_uninformative(result, clean, outputs.shape[1])
    return {**result, "per_image": per_image, "clean": clean}


def _warn_if_uninformative(result, clean, classes) -> None:
    chance = 1.0 / classes
    if clean.mean() < chance + 0.1 * (1.0 - chance):
        warnings.warn(
            f"faithfulness: the model is near chance on these images (mean true-class probability "
            f"{clean.mean():.3f}, chance {chance:.3f}): its maps point at nothing it has learnt. "
            f"Train it first, or pass images it classifies.", stacklevel=3)
    low, high = result["interval"]["peak - random"]
    if len(clean) < 2:
        warnings.warn("faithfulness: one image gives no interval for peak - random; pass more "
                      "images to tell the map's peak from a random place.", stacklevel=3)
    elif not (low > 0 or high < 0):
        warnings.warn(
            f"faithfulness: peak - random = {result['peak - random']:+.4f}, 95 % interval "
            f"[{low:+.4f}, {high:+.4f}] contains 0: on these {len(clean)} images a box at the "
            f"map's peak is not shown to matter more (or less) than one at a random place. "
            f"Pass more images.", stacklevel=3)
