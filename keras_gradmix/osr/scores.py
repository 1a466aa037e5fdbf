"""Open-set score functions, higher = "more likely known". NumPy in, NumPy out.

From logits ``z`` (N, C), plain functions: :func:`msp`, :func:`mls`,
:func:`energy`, :func:`entropy`, :func:`gen`; and the feature helpers the
fitted scores of :mod:`keras_gradmix.osr.scorers` and the k-NN predictions
share (:func:`features_2d`, :func:`unit`, :func:`knn_class_scores`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp


def _logits(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"Scores need logits of shape (samples, classes), got {logits.shape}.")
    return logits


def msp(logits) -> np.ndarray:
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""
    return np.exp(log_softmax(_logits(logits), axis=1).max(axis=1))


def mls(logits) -> np.ndarray:
    """Maximum logit (the "strong baseline" of Vaze et al. 2022)."""
    return _logits(logits).max(axis=1)


def energy(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative energy ``T * logsumexp(z / T)`` (Liu et al. 2020)."""
    return temperature * logsumexp(_logits(logits) / temperature, axis=1)


def entropy(logits) -> np.ndarray:
    """Negated entropy of the softmax, ``sum_c p_c log p_c``."""
    log_p = log_softmax(_logits(logits), axis=1)
    return (np.exp(log_p) * log_p).sum(axis=1)


def gen(logits, gamma: float = 0.1, m: int = 100) -> np.ndarray:
    """Minus the generalised entropy of the top-``m`` softmax probabilities,
    ``-sum_j p_j^gamma (1 - p_j)^gamma`` (Liu et al. 2023, GEN; ``m`` is capped
    at the number of classes)."""
    if not 0 < gamma < 1:
        raise ValueError(f"gen's gamma must be in (0, 1), got {gamma!r}.")
    p = np.exp(log_softmax(_logits(logits), axis=1))
    top = np.sort(p, axis=1)[:, -min(int(m), p.shape[1]):]
    return -np.sum(top**gamma * (1.0 - top) ** gamma, axis=1)


def features_2d(name, features) -> np.ndarray:
    """``(N, D)`` float64 features; a 4-D feature map is averaged over space."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 4:
        features = features.mean(axis=(1, 2))
    if features.ndim != 2:
        raise ValueError(f"{name} must be (samples, dims) features, got shape {features.shape}.")
    return features


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_class_scores(features, train_features, train_labels, k: int = 3, chunk: int = 1024):
    """Per class, the sum of the top-``k`` cosine similarities to that class's
    training features: ``(N, C)``, classes in sorted label order."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    test = unit(features_2d("features", features))
    train = unit(features_2d("train_features", train_features))
    labels = np.asarray(train_labels).ravel()
    if labels.shape[0] != train.shape[0]:
        raise ValueError(
            f"train_labels has {labels.shape[0]} entries for {train.shape[0]} train features."
        )
    classes = np.unique(labels)
    out = np.empty((test.shape[0], classes.size))
    for j, c in enumerate(classes):
        members = train[labels == c]
        kk = min(int(k), members.shape[0])
        for start in range(0, test.shape[0], chunk):  # bounded memory
            sims = test[start : start + chunk] @ members.T
            top = np.partition(sims, sims.shape[1] - kk, axis=1)[:, -kk:]
            out[start : start + chunk, j] = top.sum(axis=1)
    return out


LOGIT_SCORES = {"msp": msp, "mls": mls, "energy": energy, "entropy": entropy, "gen": gen}
