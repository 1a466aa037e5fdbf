"""Open-set evaluation of a model: every requested score, every metric."""

from __future__ import annotations

import numpy as np

from keras_gradmix.osr import scores as score_lib
from keras_gradmix.osr.calibration import aurc, confidences_from_logits, ece
from keras_gradmix.osr.features import MODEL_SCORES, collect, inner_model
from keras_gradmix.osr.metrics import evaluate_open_set
from keras_gradmix.osr.probe import knn_predict
from keras_gradmix.osr.scorers import SCORERS, make_scorer

PREDICTIONS = ("logits", "knn")
SCORES = tuple(score_lib.LOGIT_SCORES) + tuple(SCORERS) + tuple(MODEL_SCORES)


def check_scores(scores, feature_layer, train_data, predictions="logits") -> tuple[str, ...]:
    """Validates score names and the prediction rule; feature scores and
    k-NN predictions need a layer and training data."""
    if isinstance(scores, str):
        scores = (scores,)
    scores = tuple(scores)
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise ValueError(f"Unknown open-set scores {unknown}; choose from {SCORES}.")
    if predictions not in PREDICTIONS:
        raise ValueError(f"predictions must be one of {PREDICTIONS}, got {predictions!r}.")
    feature_scores = [s for s in scores if s in SCORERS and SCORERS[s].inputs == "features"]
    if predictions == "knn":
        feature_scores.append("predictions='knn'")
    if feature_scores and (feature_layer is None or train_data is None):
        raise ValueError(
            f"{feature_scores} compare features with those of the training "
            f"data: pass feature_layer='<layer path>' (e.g. the global pooling "
            f"layer) and train_data=(x_train, y_train) of the known classes."
        )
    fitted = [s for s in scores if s in SCORERS]
    if fitted and train_data is None:
        raise ValueError(f"{fitted} are fitted on the training data: pass train_data=(x_train, "
                         f"y_train) of the known classes.")
    return scores


def needs_features(scores, predictions="logits") -> bool:
    return predictions == "knn" or any(s in SCORERS and SCORERS[s].inputs == "features"
                                       for s in scores)


def needs_train(scores, predictions="logits") -> bool:
    """Whether a score is fitted on (or the predictions vote with) training data."""
    return predictions == "knn" or any(s in SCORERS for s in scores)


def head_weights(model) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` of the model's final ``Dense`` layer (its output layer)."""
    import keras

    layers = [layer for layer in getattr(inner_model(model), "layers", [])
              if isinstance(layer, keras.layers.Dense)]
    if not layers:
        raise ValueError(
            "react, ash, scale and vim recompute logits with the classifier head: the "
            "model needs a final Dense layer (found none among its layers).")
    dense = layers[-1]
    weights = keras.ops.convert_to_numpy(dense.kernel)
    bias = keras.ops.convert_to_numpy(dense.bias) if dense.use_bias else np.zeros(weights.shape[1])
    return weights, bias


def merge_score_options(k: int = 3, temperature: float = 1.0, options: dict | None = None) -> dict:
    """Each score's hyper-parameters: the papers' defaults, ``k`` for
    ``knn_relative``, ``temperature`` for ``energy``, then ``options[name]``."""
    merged = {"knn_relative": {"k": k}, "energy": {"temperature": temperature}, "odin": {}}
    for name, extra in (options or {}).items():
        if name not in SCORES:
            raise ValueError(f"score_options names {name!r}, not a score; choose from {SCORES}.")
        merged[name] = {**merged.get(name, {}), **extra}
    return merged


def fit_scorers(model, scores, train: dict | None, options: dict) -> dict:
    """The feature scorers among ``scores``, each fitted once on ``train``."""
    names = [s for s in scores if s in SCORERS]
    head = head_weights(model) if any(SCORERS[s].needs_head for s in names) else None
    return {name: make_scorer(name, **options.get(name, {})).fit(
        train[SCORERS[name].inputs], train["labels"], head) for name in names}


def collect_for(model, data, scores, layer, batch_size, options) -> dict:
    """:func:`collect` with the model-computed scores ``scores`` asks for (ODIN)."""
    model_scores = {name: options.get(name, {}) for name in scores if name in MODEL_SCORES}
    return collect(model, data, layer, batch_size, model_scores)


def score(name: str, part: dict, scorers: dict, options: dict):
    """Score ``name`` of :func:`collect` output ``part`` (a fitted scorer's,
    a model-computed one's, or a logit score's)."""
    if name in scorers:
        return scorers[name](part[scorers[name].inputs])
    if name in MODEL_SCORES:
        return part["scores"][name]
    return score_lib.LOGIT_SCORES[name](part["logits"], **options.get(name, {}))


def open_set_scores(
    model, known_data, unknown_data, scores=("msp", "mls"), *, feature_layer=None,
    train_data=None, k: int = 3, temperature: float = 1.0, batch_size: int = 256,
    predictions: str = "logits", score_options: dict | None = None,
) -> dict:
    """Scores of the known and unknown samples and the known predictions.

    ``predictions``: the closed-set prediction, ``"logits"`` (arg-max of the
    model's outputs) or ``"knn"`` (a ``k``-NN vote on the ``feature_layer``
    features, for encoders without a classification head). Feature scores are
    fitted once on ``train_data`` (:mod:`keras_gradmix.osr.scorers`);
    ``score_options`` maps a score to its hyper-parameters (e.g.
    ``{"knn": {"k": 100}, "react": {"percentile": 95}}``).

    Returns ``{"known_true", "known_pred", "known_logits", "unknown_true"
    (None without labels), "known": {score: array}, "unknown": {score:
    array}}``.
    """
    scores = check_scores(scores, feature_layer, train_data, predictions)
    options = merge_score_options(k, temperature, score_options)
    layer = feature_layer if needs_features(scores, predictions) else None
    known = collect_for(model, known_data, scores, layer, batch_size, options)
    unknown = collect_for(model, unknown_data, scores, layer, batch_size, options)
    if known["labels"] is None:
        raise ValueError("known_data needs labels: pass (x, y) or a dataset of (x, y).")
    train = collect(model, train_data, layer, batch_size) if needs_train(scores, predictions) else None
    scorers = fit_scorers(model, scores, train, options)

    if predictions == "knn":
        known_pred = knn_predict(known["features"], train["features"], train["labels"], k)
    else:
        known_pred = known["logits"].argmax(axis=1)
    return {
        "known_true": known["labels"],
        "known_pred": known_pred,
        "known_logits": known["logits"],
        "unknown_true": unknown["labels"],
        "known": {name: score(name, known, scorers, options) for name in scores},
        "unknown": {name: score(name, unknown, scorers, options) for name in scores},
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


def per_class_metrics(raw: dict, score_name: str) -> dict:
    """Per known class, its closed-set accuracy; per unknown class, the AUROC
    of ``score_name`` for all known samples against that class's samples.

    ``raw`` is :func:`open_set_scores` output; the unknown breakdown needs
    labels on the unknown data (the original class ids).

    Returns ``{"accuracy": {known class: value}, "auroc": {unknown class: value}}``.
    """
    if score_name not in raw["known"]:
        raise ValueError(
            f"score {score_name!r} was not computed; these were: {sorted(raw['known'])}. Pass "
            f"it to open_set_scores(scores=...) first.")
    true, correct = raw["known_true"], raw["known_pred"] == raw["known_true"]
    accuracy = {int(c): float(correct[true == c].mean()) for c in np.unique(true)}
    auroc = {}
    if raw.get("unknown_true") is not None:
        unknown = raw["unknown"][score_name]
        for c in np.unique(raw["unknown_true"]):
            auroc[int(c)] = evaluate_open_set(raw["known"][score_name],
                                              unknown[raw["unknown_true"] == c])["auroc"]
    return {"accuracy": accuracy, "auroc": auroc}


def calibration_by_score(raw: dict, bins: int = 15) -> dict:
    """``{"ece": ..., "aurc": {score: ...}}`` of :func:`open_set_scores` output:
    the ECE of the known samples' softmax, and the AURC when each score is
    the confidence that decides which predictions to keep (``msp`` gives the
    usual AURC; with ``predictions="knn"`` the k-NN votes are kept or not,
    while the ECE stays that of the logits' own arg-max)."""
    confidences, softmax_correct = confidences_from_logits(raw["known_logits"], raw["known_true"])
    correct = raw["known_pred"] == raw["known_true"]  # the predictions the report used
    return {"ece": ece(confidences, softmax_correct, bins),
            "aurc": {name: aurc(values, correct) for name, values in raw["known"].items()}}
