"""Out-of-distribution detection: one in-distribution test set against named OOD sets."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from keras_gradmix.osr import scores as score_lib
from keras_gradmix.osr.evaluation import check_scores, needs_features, score
from keras_gradmix.osr.features import collect
from keras_gradmix.osr.metrics import evaluate_open_set

OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


def evaluate_ood(
    model, in_data, ood_data: Mapping[str, Any], scores: Sequence[str] | None = None, *,
    feature_layer: str | None = None, train_data=None, k: int = 3, temperature: float = 1.0,
    batch_size: int = 256,
) -> list[dict]:
    """AUROC, AUPR-In, AUPR-Out and FPR95 of every score on every OOD set.

    In-distribution samples are the positive class (higher score = "more
    likely in-distribution"), as in the open-set metrics; the model runs once
    over ``in_data`` and once over each OOD set.

    Args:
        model: any Keras classifier returning logits (or a ``GradMixModel``).
        in_data: in-distribution test images: an array, ``(x, y)`` or a
            ``tf.data.Dataset`` (labels are not needed).
        ood_data: ``{name: images}``, each in any form ``in_data`` accepts.
        scores: names among ``msp, mls, energy, entropy, knn, mahalanobis``;
            default: every logit score, and also ``knn`` and ``mahalanobis``
            when ``feature_layer`` and ``train_data`` are given.
        feature_layer, train_data: the layer whose outputs the feature scores
            compare, and the labelled in-distribution training data they
            compare with.
        k, temperature: of ``knn`` and ``energy``.

    Returns:
        A tidy table: one dict per (OOD set, score) with keys ``ood, score,
        auroc, aupr_in, aupr_out, fpr95`` (write it with
        :func:`keras_gradmix.tables.to_markdown` / ``to_csv``).

    Example:

    ```python
    rows = evaluate_ood(model, x_test, {"mnist": x_mnist, "noise": x_noise})
    print(keras_gradmix.tables.to_markdown(rows))
    ```
    """
    if not isinstance(ood_data, Mapping) or not ood_data:
        raise ValueError(
            "ood_data must be a non-empty dict {name: data}, e.g. {'mnist': x_mnist}; "
            f"got {type(ood_data).__name__}."
        )
    if scores is None:
        scores = tuple(score_lib.LOGIT_SCORES)
        if feature_layer is not None and train_data is not None:
            scores += tuple(score_lib.FEATURE_SCORES)
    scores = check_scores(scores, feature_layer, train_data)
    layer = feature_layer if needs_features(scores) else None
    train = collect(model, train_data, layer, batch_size) if layer else None
    inside = collect(model, in_data, layer, batch_size)
    in_scores = {name: score(name, inside, train, k, temperature) for name in scores}
    rows = []
    for ood_name, data in ood_data.items():
        outside = collect(model, data, layer, batch_size)
        for name in scores:
            metrics = evaluate_open_set(in_scores[name], score(name, outside, train, k, temperature))
            rows.append({"ood": ood_name, "score": name, **metrics})
    return rows
