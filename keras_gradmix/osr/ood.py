"""Out-of-distribution detection: one in-distribution test set against named
OOD sets, optionally in named groups (near / far OOD, as OpenOOD reports)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from keras_gradmix.osr import scores as score_lib
from keras_gradmix.osr.evaluation import (
    check_scores,
    collect_for,
    fit_scorers,
    merge_score_options,
    needs_features,
    needs_train,
    score,
)
from keras_gradmix.osr.features import collect
from keras_gradmix.osr.metrics import evaluate_open_set

OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
DEFAULT_FEATURE_SCORES = ("knn", "mahalanobis", "react", "ash", "scale", "vim")


def _groups(ood_data) -> dict[str, dict[str, Any]]:
    """``{group: {name: data}}``; a flat ``{name: data}`` is one group, ""."""
    if not isinstance(ood_data, Mapping) or not ood_data:
        raise ValueError(
            "ood_data must be a non-empty dict {name: data} (or {group: {name: data}}, "
            f"e.g. {{'near': {{'mnist': x_mnist}}, 'far': {{'noise': x_noise}}}}); got "
            f"{type(ood_data).__name__}.")
    nested = [isinstance(v, Mapping) for v in ood_data.values()]
    if all(nested):
        if any(not v for v in ood_data.values()):
            raise ValueError("Every OOD group needs at least one set.")
        return {group: dict(sets) for group, sets in ood_data.items()}
    if any(nested):
        raise ValueError("ood_data mixes groups ({name: data} values) and sets; use one form.")
    return {"": dict(ood_data)}


def evaluate_ood(
    model, in_data, ood_data: Mapping[str, Any], scores: Sequence[str] | None = None, *,
    feature_layer: str | None = None, train_data=None, k: int = 3, temperature: float = 1.0,
    batch_size: int = 256, score_options: dict | None = None,
) -> list[dict]:
    """AUROC, AUPR-In, AUPR-Out and FPR95 of every score on every OOD set.

    In-distribution samples are the positive class (higher score = "more
    likely in-distribution"), as in the open-set metrics; the model runs once
    over ``in_data`` and once over each OOD set, and each feature score is
    fitted once on ``train_data`` and applied to every set.

    Args:
        model: any Keras classifier returning logits (or a ``GradMixModel``).
        in_data: in-distribution test images: an array, ``(x, y)`` or a
            ``tf.data.Dataset`` (labels are not needed).
        ood_data: ``{name: images}``, or named groups of them
            ``{"near": {name: images}, "far": {...}}``: then a row per set
            and a row per group (``ood="<group> (mean)"``, the mean of its sets'
            metrics).
        scores: names among the logit scores (``msp, mls, energy, entropy,
            gen``), ``odin`` and the fitted ones (``knn, knn_relative,
            mahalanobis, rmds, react, ash, scale, vim, she, fdbd, klm``); default: every logit score, and with
            ``feature_layer`` and ``train_data`` also ``knn, mahalanobis,
            react, ash, scale, vim``.
        feature_layer, train_data: the layer whose outputs the feature scores
            compare, and the labelled in-distribution training data they are
            fitted on.
        k, temperature, score_options: hyper-parameters (see
            :func:`keras_gradmix.osr.open_set_scores`).

    Returns:
        A tidy table: one dict per (OOD set, score) with keys ``group, ood,
        score, auroc, aupr_in, aupr_out, fpr95`` (write it with
        :func:`keras_gradmix.tables.to_markdown` / ``to_csv``).

    Examples:

    ```python
    rows = evaluate_ood(model, x_test, {"near": {"mnist": x_mnist},
                                        "far": {"noise": x_noise}})
    print(keras_gradmix.tables.to_markdown(rows))
    ```
    """
    groups = _groups(ood_data)
    if scores is None:
        scores = tuple(score_lib.LOGIT_SCORES)
        if feature_layer is not None and train_data is not None:
            scores += DEFAULT_FEATURE_SCORES
    scores = check_scores(scores, feature_layer, train_data)
    options = merge_score_options(k, temperature, score_options)
    layer = feature_layer if needs_features(scores) else None
    train = collect(model, train_data, layer, batch_size) if needs_train(scores) else None
    scorers = fit_scorers(model, scores, train, options)
    inside = collect_for(model, in_data, scores, layer, batch_size, options)
    in_scores = {name: score(name, inside, scorers, options) for name in scores}
    rows = []
    for group, sets in groups.items():
        group_rows = []
        for ood_name, data in sets.items():
            outside = collect_for(model, data, scores, layer, batch_size, options)
            for name in scores:
                metrics = evaluate_open_set(in_scores[name], score(name, outside, scorers, options))
                group_rows.append({"group": group, "ood": ood_name, "score": name, **metrics})
        rows += group_rows
        if group:
            for name in scores:
                mine = [r for r in group_rows if r["score"] == name]
                rows.append({"group": group, "ood": f"{group} (mean)", "score": name,
                             **{m: float(np.mean([r[m] for r in mine])) for m in OOD_METRICS}})
    return rows
