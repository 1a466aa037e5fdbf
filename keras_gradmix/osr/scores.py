"""Open-set score functions, higher = "more likely known". NumPy in, NumPy out.

From logits ``z`` (N, C): :func:`msp`, :func:`mls`, :func:`energy`,
:func:`entropy`. From features ``f`` (N, D), fitted on training features of
the known classes only: :func:`knn` and :func:`mahalanobis`.
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


def _features(name, features) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 4:  # a feature map: average over space
        features = features.mean(axis=(1, 2))
    if features.ndim != 2:
        raise ValueError(f"{name} must be (samples, dims) features, got shape {features.shape}.")
    return features


def _train_set(train_features, train_labels):
    train = _features("train_features", train_features)
    labels = np.asarray(train_labels).ravel()
    if labels.shape[0] != train.shape[0]:
        raise ValueError(
            f"train_labels has {labels.shape[0]} entries for {train.shape[0]} train features."
        )
    classes = np.unique(labels)
    return train, labels, classes


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_class_scores(features, train_features, train_labels, k: int = 3, chunk: int = 1024):
    """Per class, the sum of the top-``k`` cosine similarities to that class's
    training features: ``(N, C)``, classes in sorted label order."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    test = _unit(_features("features", features))
    train, labels, classes = _train_set(train_features, train_labels)
    train = _unit(train)
    out = np.empty((test.shape[0], classes.size))
    for j, c in enumerate(classes):
        members = train[labels == c]
        kk = min(int(k), members.shape[0])
        for start in range(0, test.shape[0], chunk):  # bounded memory
            sims = test[start : start + chunk] @ members.T
            top = np.partition(sims, sims.shape[1] - kk, axis=1)[:, -kk:]
            out[start : start + chunk, j] = top.sum(axis=1)
    return out


def knn(features, train_features, train_labels, k: int = 3) -> np.ndarray:
    """kNN score as the GradMix reference code: ``max_c s_c / sum_c' s_c'``.

    ``s_c`` is the sum of the top-``k`` cosine similarities to class ``c``'s
    training features (:func:`knn_class_scores`). The score is relative: a
    sample equally close to every class gets ``1 / C`` however far it is; it
    assumes non-negative similarities (e.g. features after a ReLU). A sample
    with no similarity to any class (e.g. all-zero features) also gets ``1 / C``.
    """
    s = knn_class_scores(features, train_features, train_labels, k)
    total = s.sum(axis=1)
    return np.divide(s.max(axis=1), total, out=np.full(total.shape, 1.0 / s.shape[1]),
                     where=total > 0)


def mahalanobis(features, train_features, train_labels) -> np.ndarray:
    """``max_c -(f - mu_c)^T S^-1 (f - mu_c)`` with class means ``mu_c`` and one
    covariance ``S`` of the class-centred training features (Lee et al. 2018)."""
    from sklearn.covariance import EmpiricalCovariance

    test = _features("features", features)
    train, labels, classes = _train_set(train_features, train_labels)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    precision = EmpiricalCovariance(assume_centered=True).fit(centred).precision_
    distances = np.stack(
        [np.sum(((test - mu) @ precision) * (test - mu), axis=1) for mu in means], axis=1
    )
    return -distances.min(axis=1)


LOGIT_SCORES = {"msp": msp, "mls": mls, "energy": energy, "entropy": entropy}
FEATURE_SCORES = {"knn": knn, "mahalanobis": mahalanobis}
SCORES = tuple(LOGIT_SCORES) + tuple(FEATURE_SCORES)
