"""Fitted scores that use the classifier head (or the logits): ReAct, ASH,
SCALE, ViM, SHE, fDBD, KLM.

All but ``klm`` recompute logits from the features with the head ``(W, b)``:
the features must be what the final ``Dense`` layer takes (e.g. the global
pooling output). ``klm`` takes logits.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from keras_gradmix.osr.scorer import Scorer, count_option, percentile_option


class ReAct(Scorer):
    """Sun et al. 2021: energy of the logits of ``min(f, c)``, ``c`` the
    ``percentile`` of all training activations."""

    name, needs_head, params, state = "react", True, ("percentile",), ("clip",)

    def __init__(self, percentile: float = 90.0):
        self.percentile = percentile_option("percentile", percentile)

    def _fit(self, train, labels):
        self.clip = float(np.percentile(train.ravel(), self.percentile))

    def _score(self, features):
        return self.energy(np.minimum(features, self.clip))


def _top_and_scale(features, percentile):
    """Each sample's activations at or above its ``percentile`` (the rest
    zeroed) and ``exp(s1 / s2)``, the sums of all and of those (1 where
    ``s2`` is 0): what ASH-S and SCALE share."""
    n = features.shape[1]
    keep = n - int(np.round(n * percentile / 100.0))
    threshold = np.partition(features, n - keep, axis=1)[:, n - keep][:, None]
    kept = np.where(features >= threshold, features, 0.0)
    s1, s2 = features.sum(axis=1), kept.sum(axis=1)
    return kept, np.exp(np.divide(s1, s2, out=np.zeros_like(s1), where=s2 > 0))


class ASH(Scorer):
    """Djurisic et al. 2023, ASH-S: per sample, the activations below its own
    ``percentile`` are zeroed and the rest multiplied by ``exp(s1 / s2)``
    (``s1``, ``s2``: sums before and after pruning; a sample whose kept
    activations sum to 0, e.g. all ReLUs dead, is not scaled); energy of the
    head's logits. Nothing is fitted but the head."""

    name, needs_head, params = "ash", True, ("percentile",)

    def __init__(self, percentile: float = 90.0):
        self.percentile = percentile_option("percentile", percentile)

    def _score(self, features):
        kept, scale = _top_and_scale(features, self.percentile)
        return self.energy(kept * scale[:, None])


class SCALE(Scorer):
    """Xu et al. 2024, SCALE: ASH-S's scale without its pruning: the features
    times ``exp(s1 / s2)``, ``s2`` the sum of the activations above the
    sample's ``percentile`` (not scaled where that sum is 0); energy of the
    head's logits."""

    name, needs_head, params = "scale", True, ("percentile",)

    def __init__(self, percentile: float = 85.0):
        self.percentile = percentile_option("percentile", percentile)

    def _score(self, features):
        _, scale = _top_and_scale(features, self.percentile)
        return self.energy(features * scale[:, None])


class ViM(Scorer):
    """Wang et al. 2022, ViM: with the origin ``u = -pinv(W^T) b``, the principal
    subspace (the top ``dim`` eigenvectors of the training features' second
    moment about ``u``), the residual norm ``r`` off it and ``alpha`` = mean max logit /
    mean ``r`` over the training set, the score is ``energy - alpha * r``.
    ``dim`` defaults to half the feature dimension (the paper picks 1000 of
    2048 and 512 of 768)."""

    name, needs_head, params, state = "vim", True, ("dim",), ("origin", "null_space", "alpha")

    def __init__(self, dim: int | None = None):
        self.dim = None if dim is None else count_option("dim", dim)

    def _fit(self, train, labels):
        weights, bias = self.head
        self.origin = -np.linalg.pinv(weights.T) @ bias
        dim = self.dim or max(1, train.shape[1] // 2)
        if dim >= train.shape[1]:
            raise ValueError(f"vim's dim ({dim}) must be below the feature dimension "
                             f"({train.shape[1]}).")
        centred = train - self.origin  # the covariance about u, not about the mean
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
        order = np.argsort(eigenvalues)[::-1]
        self.null_space = eigenvectors[:, order[dim:]]
        residual = np.linalg.norm(centred @ self.null_space, axis=1)
        logits = self.logits(train)
        self.alpha = logits.max(axis=1).mean() / residual.mean()

    def _score(self, features):
        residual = np.linalg.norm((features - self.origin) @ self.null_space, axis=1)
        return self.energy(features) - self.alpha * residual


class SHE(Scorer):
    """Zhang et al. 2023, SHE (simplified Hopfield energy): ``<f, m_c>`` with
    ``c`` the head's prediction and ``m_c`` the mean training feature of the
    class-``c`` images the head classifies correctly (all class-``c`` images
    if none is), OpenOOD's ``she``."""

    name, needs_head, state = "she", True, ("patterns",)

    def _fit(self, train, labels):
        if labels is None or len(labels) != len(train):
            raise ValueError("she needs one train label per train feature.")
        predicted = self.logits(train).argmax(axis=1)
        patterns = []
        for c in range(self.head[0].shape[1]):
            members = train[(labels == c) & (predicted == c)]
            if not len(members):
                members = train[labels == c]
            if not len(members):
                raise ValueError(f"she: no training feature has label {c}.")
            patterns.append(members.mean(axis=0))
        self.patterns = np.stack(patterns)

    def _score(self, features):
        predicted = self.logits(features).argmax(axis=1)
        return np.sum(features * self.patterns[predicted], axis=1)


class FDBD(Scorer):
    """Liu & Qin 2024, fDBD: the feature's distances to the decision boundaries
    between the predicted class ``c`` and each other class ``k``,
    ``|z_c - z_k| / ||w_c - w_k||``, summed and divided by ``||f - mean||``
    (the mean training feature). OpenOOD's ``fdbd`` (the paper averages over
    the ``C - 1`` classes: the same ranking)."""

    name, needs_head, state = "fdbd", True, ("train_mean",)

    def _fit(self, train, labels):
        self.train_mean = train.mean(axis=0)

    def _score(self, features):
        weights, _ = self.head
        logits = self.logits(features)
        predicted = logits.argmax(axis=1)
        gaps = np.abs(logits - logits.max(axis=1, keepdims=True))  # 0 for the predicted class
        norms = np.linalg.norm(weights.T[predicted][:, None, :] - weights.T[None], axis=2)
        norms[np.arange(len(features)), predicted] = 1.0
        distance = np.linalg.norm(features - self.train_mean, axis=1)
        return np.sum(gaps / np.maximum(norms, 1e-12), axis=1) / np.maximum(distance, 1e-12)


class KLM(Scorer):
    """Hendrycks et al. 2022, KL matching: ``-min_c KL(p || d_c)``, ``p`` the
    softmax of the logits and ``d_c`` the mean softmax of the training images
    predicted as class ``c`` (one-hot ``c`` if none is), OpenOOD's ``klm``.
    Takes logits, not features."""

    name, inputs, state = "klm", "logits", ("templates",)

    def _fit(self, train, labels):
        probabilities = softmax(train, axis=1)
        predicted = train.argmax(axis=1)
        eye = np.eye(train.shape[1])
        self.templates = np.stack([probabilities[predicted == c].mean(axis=0)
                                   if np.any(predicted == c) else eye[c]
                                   for c in range(train.shape[1])])

    def _score(self, logits):
        p = softmax(logits, axis=1)
        # KL(p || d) = sum p log p - sum p log d; 0 log 0 = 0, as scipy.stats.entropy.
        own = np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        cross = p @ np.log(np.maximum(self.templates, 1e-300)).T
        return -(own[:, None] - cross).min(axis=1)
