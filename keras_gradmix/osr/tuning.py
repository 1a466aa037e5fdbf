"""Score hyper-parameters chosen on validation data, never on the test set.

OpenOOD v1.5's validation protocol: each score's grid is searched on a
validation split disjoint from the test split (held-out known images plus a
validation OOD set, e.g. other unknown classes or a synthetic set), and the
values with the best validation AUROC are kept (the first in grid order on
ties). The default grids are OpenOOD's sweeps (GEN's ``gamma`` kept in
(0, 1)).

```python
tuned = tune_scores(model, (x_val, y_val), x_val_ood, ("energy", "react"),
                    feature_layer="gap", train_data=(x_train, y_train))
tuned["react"]["options"], tuned["react"]["auroc"]       # {'percentile': 95.0}, 0.93
rows = evaluate_ood(model, x_test, ood_sets, ("energy", "react"), feature_layer="gap",
                    train_data=(x_train, y_train), score_options=tuned_options(tuned))
```
"""

from __future__ import annotations

import itertools
import warnings
from typing import Mapping, Sequence

from keras_gradmix.osr import scores as score_lib
from keras_gradmix.osr.evaluation import (
    MODEL_SCORES,
    check_scores,
    collect_for,
    head_weights,
    needs_features,
    needs_train,
)
from keras_gradmix.osr.features import collect
from keras_gradmix.osr.metrics import evaluate_open_set
from keras_gradmix.osr.scorers import SCORERS, make_scorer

GRIDS = {
    "energy": {"temperature": (1.0, 10.0, 100.0, 1000.0)},
    "gen": {"gamma": (0.01, 0.1, 0.5), "m": (10, 50, 100)},
    "odin": {"temperature": (1.0, 10.0, 100.0, 1000.0), "noise": (0.0014, 0.0028)},
    "knn": {"k": (50, 100, 200, 500, 1000)},
    "knn_relative": {"k": (1, 3, 5, 10)},
    "react": {"percentile": (85.0, 90.0, 95.0, 99.0)},
    "ash": {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)},
    "scale": {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)},
}
"""Each score's default grid, ``{score: {option: values}}``; a score not here
has no hyper-parameter searched (pass ``grids=`` to add one, e.g. ViM's
``dim``)."""


def _combinations(grid: Mapping[str, Sequence]) -> list[dict]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def tune_scores(
    model, val_known, val_unknown, scores: Sequence[str], *, feature_layer: str | None = None,
    train_data=None, grids: Mapping[str, Mapping[str, Sequence]] | None = None,
    batch_size: int = 256,
) -> dict:
    """Each score's hyper-parameters with the best AUROC on validation data.

    Args:
        model: the trained classifier.
        val_known: held-out known-class images (``x`` or ``(x, y)``), not the
            test images.
        val_unknown: validation OOD images, disjoint from the test unknowns.
        scores: score names, as in :func:`~keras_gradmix.osr.open_set_scores`.
        feature_layer, train_data: as there (the fitted scores are fitted on
            ``train_data`` once per grid point).
        grids: ``{score: {option: values}}`` replacing :data:`GRIDS` entries.

    Returns:
        ``{score: {"options": best, "auroc": its validation AUROC, "trials":
        [{"options", "auroc"}, ...], "scorer": the fitted scorer with the best
        options (fitted scores only; ``scorer.options`` says them), "edge":
        {option: "lowest" | "highest"} (only where the best value is an end of
        its grid and beats the others: a ``UserWarning`` says so, since a value
        beyond it may be better)}}``.
    """
    scores = check_scores(scores, feature_layer, train_data)
    grids = {**GRIDS, **(grids or {})}
    for name, grid in grids.items():
        if name not in scores:
            continue
        if not grid or any(len(values) == 0 for values in grid.values()):
            raise ValueError(f"The grid of {name!r} needs at least one value per option, got {grid!r}.")
    layer = feature_layer if needs_features(scores) else None
    known = collect(model, val_known, layer, batch_size)
    unknown = collect(model, val_unknown, layer, batch_size)
    train = collect(model, train_data, layer, batch_size) if needs_train(scores) else None
    head = head_weights(model) if any(s in SCORERS and SCORERS[s].needs_head for s in scores) else None
    results = {}
    for name in scores:
        trials, best = [], None
        for options in _combinations(grids.get(name, {})):
            if name in SCORERS:
                scorer = make_scorer(name, **options).fit(train[SCORERS[name].inputs], train["labels"], head)
                pair = scorer(known[scorer.inputs]), scorer(unknown[scorer.inputs])
            elif name in MODEL_SCORES:
                scorer = None
                pair = tuple(collect_for(model, data, (name,), None, batch_size, {name: options})
                             ["scores"][name] for data in (val_known, val_unknown))
            else:
                scorer = None
                pair = tuple(score_lib.LOGIT_SCORES[name](part["logits"], **options)
                             for part in (known, unknown))
            auroc = evaluate_open_set(*pair)["auroc"]
            trials.append({"options": options, "auroc": auroc})
            if best is None or auroc > best[0]:
                best = (auroc, options, scorer)
        results[name] = {"options": best[1], "auroc": best[0], "trials": trials}
        edge = _edges(name, grids.get(name, {}), trials, best[:2])
        if edge:
            results[name]["edge"] = edge
        if best[2] is not None:
            best[2].validation_auroc = best[0]
            results[name]["scorer"] = best[2]
    return results


def _edges(name: str, grid: Mapping[str, Sequence], trials: list[dict], best: tuple) -> dict:
    """``{option: "lowest" | "highest"}`` for each option whose best value is an
    end of its grid and beats every other value of it: the search then says
    only "this end or beyond" (warned, with the fix)."""
    edges = {}
    auroc, options = best
    for option, values in grid.items():
        value = options[option]
        if len(set(values)) < 2 or value not in (min(values), max(values)):
            continue
        others = [t["auroc"] for t in trials if t["options"][option] != value]
        if auroc > max(others):
            edges[option] = "lowest" if value == min(values) else "highest"
            beyond = "lower" if edges[option] == "lowest" else "higher"
            warnings.warn(
                f"tune_scores: the best {option} of {name!r} on validation is {value}, the "
                f"{edges[option]} value of its grid {tuple(values)}; a {beyond} one may score "
                f"better. Pass grids={{{name!r}: {{{option!r}: (...)}}}} reaching beyond it.",
                stacklevel=3)
    return edges


def tuned_options(tuned: dict) -> dict:
    """``{score: options}`` of :func:`tune_scores` output: what ``score_options=``
    of the evaluation functions and of ``OpenSetClassifier`` take."""
    return {name: dict(result["options"]) for name, result in tuned.items() if result["options"]}
