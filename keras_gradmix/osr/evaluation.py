"""Open-set evaluation of a model: every requested score, every metric."""

from __future__ import annotations

from keras_gradmix.osr import scores as score_lib
from keras_gradmix.osr.features import collect
from keras_gradmix.osr.metrics import evaluate_open_set
from keras_gradmix.osr.probe import knn_predict


PREDICTIONS = ("logits", "knn")


def check_scores(scores, feature_layer, train_data, predictions="logits") -> tuple[str, ...]:
    """Validates score names and the prediction rule; feature scores and
    k-NN predictions need a layer and training data."""
    if isinstance(scores, str):
        scores = (scores,)
    scores = tuple(scores)
    unknown = [s for s in scores if s not in score_lib.SCORES]
    if unknown or not scores:
        raise ValueError(f"Unknown open-set scores {unknown}; choose from {score_lib.SCORES}.")
    if predictions not in PREDICTIONS:
        raise ValueError(f"predictions must be one of {PREDICTIONS}, got {predictions!r}.")
    feature_scores = [s for s in scores if s in score_lib.FEATURE_SCORES]
    if predictions == "knn":
        feature_scores.append("predictions='knn'")
    if feature_scores and (feature_layer is None or train_data is None):
        raise ValueError(
            f"{feature_scores} compare features with those of the training "
            f"data: pass feature_layer='<layer path>' (e.g. the global pooling "
            f"layer) and train_data=(x_train, y_train) of the known classes."
        )
    return scores


def needs_features(scores, predictions="logits") -> bool:
    return predictions == "knn" or any(s in score_lib.FEATURE_SCORES for s in scores)


def score(name: str, part: dict, train: dict | None, k: int = 3, temperature: float = 1.0):
    """Score ``name`` of :func:`collect` output ``part``; feature scores
    compare with the ``train`` features."""
    if name in score_lib.LOGIT_SCORES:
        if name == "energy":
            return score_lib.energy(part["logits"], temperature)
        return score_lib.LOGIT_SCORES[name](part["logits"])
    extra = {"k": k} if name == "knn" else {}
    return score_lib.FEATURE_SCORES[name](part["features"], train["features"], train["labels"], **extra)


def open_set_scores(
    model, known_data, unknown_data, scores=("msp", "mls"), *, feature_layer=None,
    train_data=None, k: int = 3, temperature: float = 1.0, batch_size: int = 256,
    predictions: str = "logits",
) -> dict:
    """Scores of the known and unknown samples and the known predictions.

    ``predictions``: the closed-set prediction, ``"logits"`` (arg-max of the
    model's outputs) or ``"knn"`` (k-NN vote on the ``feature_layer`` features,
    for encoders without a classification head).

    Returns ``{"known_true", "known_pred", "known": {score: array},
    "unknown": {score: array}}``.
    """
    scores = check_scores(scores, feature_layer, train_data, predictions)
    features = needs_features(scores, predictions)
    layer = feature_layer if features else None
    known = collect(model, known_data, layer, batch_size)
    unknown = collect(model, unknown_data, layer, batch_size)
    if known["labels"] is None:
        raise ValueError("known_data needs labels: pass (x, y) or a dataset of (x, y).")
    train = collect(model, train_data, layer, batch_size) if features else None

    if predictions == "knn":
        known_pred = knn_predict(known["features"], train["features"], train["labels"], k)
    else:
        known_pred = known["logits"].argmax(axis=1)
    return {
        "known_true": known["labels"],
        "known_pred": known_pred,
        "known": {name: score(name, known, train, k, temperature) for name in scores},
        "unknown": {name: score(name, unknown, train, k, temperature) for name in scores},
    }


def metrics_by_score(raw: dict) -> dict:
    """``{score: evaluate_open_set(...)}`` from :func:`open_set_scores` output."""
    return {
        name: evaluate_open_set(
            raw["known"][name], raw["unknown"][name], raw["known_pred"], raw["known_true"]
        )
        for name in raw["known"]
    }


def evaluate_model_open_set(model, known_data, unknown_data, scores=("msp", "mls"), **kwargs) -> dict:
    """``{score: evaluate_open_set(...)}`` for a model on known and unknown data.

    Closed-set predictions are the arg-max of the model's outputs. Keyword
    arguments as in :func:`open_set_scores`.
    """
    return metrics_by_score(open_set_scores(model, known_data, unknown_data, scores, **kwargs))
