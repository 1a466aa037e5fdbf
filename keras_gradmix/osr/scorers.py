"""Fitted open-set / OOD scores: fit once on training features, apply to any set.

OpenOOD's split between a postprocessor's ``setup`` (statistics of the
training data, the classifier head) and ``postprocess`` (scores of a test
set): a scorer is made by name (:func:`make_scorer`), fitted once with
:meth:`Scorer.fit` and then called on any number of sets; nothing is refit
per set. Higher = "more likely known" for every score. NumPy in, NumPy out.

==================  =========================================================
``knn``             Sun et al. 2022: minus the distance to the ``k``-th nearest
                    L2-normalised training feature (``k=50``)
``knn_relative``    the GradMix authors' per-class ratio of top-``k`` cosine
                    similarities (``k=3``): relative, blind to distance
``mahalanobis``     Lee et al. 2018: minus the smallest class-conditional
                    Mahalanobis distance, one tied covariance
``react``           Sun et al. 2021: features clipped at their ``percentile``
                    (90) over the training set, energy of the head's logits
``ash``             Djurisic et al. 2023, ASH-S: per sample, activations below
                    the ``percentile`` (90) zeroed, the rest scaled by
                    ``exp(sum(all) / sum(kept))``, energy of the head's logits
``scale``           Xu et al. 2024, SCALE: no pruning, features scaled by
                    ``exp(sum(all) / sum(above the percentile (85)))``, energy
``vim``             Wang et al. 2022, ViM: energy minus ``alpha`` times the norm
                    of the feature's residual off the principal subspace
==================  =========================================================

``react``, ``ash``, ``scale`` and ``vim`` recompute logits from the
features with the classifier head ``(W, b)``: the features must be what the
final ``Dense`` layer takes (e.g. the global pooling output).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from keras_gradmix.osr.scores import features_2d, knn_class_scores, unit


def _percentile(name, value):
    if not 0 <= value < 100:
        raise ValueError(f"{name} must be in [0, 100), got {value!r}.")
    return float(value)


def _count(name, value):
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


class Scorer:
    """Base class: ``fit(train_features, train_labels, head)``, then call."""

    name = ""
    needs_head = False
    state: tuple = ()  # the attributes ``fit`` sets: what get_state saves

    def get_state(self) -> dict:
        """The fitted state, ``{name: array}`` (the head's ``W``, ``b`` as
        ``head_kernel``, ``head_bias``): what a saved decision stores."""
        if not getattr(self, "fitted", False):
            raise ValueError(f"Fit the {self.name!r} scorer before saving its state.")
        state = {key: np.asarray(getattr(self, key)) for key in self.state}
        if self.head is not None:
            state["head_kernel"], state["head_bias"] = self.head
        return state

    def set_state(self, state: dict) -> "Scorer":
        """Restores :meth:`get_state`'s output; the scorer is then fitted."""
        expected = set(self.state) | ({"head_kernel", "head_bias"} if self.needs_head else set())
        if expected - set(state):
            raise ValueError(f"The saved {self.name!r} state lacks {sorted(expected - set(state))}.")
        for key in self.state:
            value = np.asarray(state[key])
            setattr(self, key, value.item() if value.ndim == 0 else value)
        self.head = None
        if "head_kernel" in state:
            self.head = (np.asarray(state["head_kernel"], np.float64), np.asarray(state["head_bias"], np.float64))
        self.fitted = True
        return self

    def fit(self, train_features, train_labels=None, head=None) -> "Scorer":
        if self.needs_head and head is None:
            raise ValueError(
                f"The {self.name!r} score recomputes logits from the features: it needs the "
                f"classifier head (W, b), the final Dense layer the features feed.")
        self.head = None if head is None else (np.asarray(head[0], np.float64),
                                                np.asarray(head[1], np.float64))
        self._fit(features_2d("train_features", train_features),
                  None if train_labels is None else np.asarray(train_labels).ravel())
        self.fitted = True
        return self

    def _fit(self, train, labels):
        pass

    def __call__(self, features) -> np.ndarray:
        if not getattr(self, "fitted", False):
            raise ValueError(f"Fit the {self.name!r} scorer first: scorer.fit(train_features, ...).")
        return self._score(features_2d("features", features))

    def energy(self, features):
        """``logsumexp`` of the head's logits of ``features``."""
        weights, bias = self.head
        if features.shape[1] != weights.shape[0]:
            raise ValueError(
                f"The features have {features.shape[1]} dims but the head takes "
                f"{weights.shape[0]}: pass the layer the final Dense layer reads.")
        return logsumexp(features @ weights + bias, axis=1)


class KNN(Scorer):
    """Sun et al. 2022: ``-|| z - z_(k) ||`` of L2-normalised features (an
    all-zero feature stays zero), ``z_(k)`` the ``k``-th nearest normalised
    training feature."""

    name, state = "knn", ("train", "kk")

    def __init__(self, k: int = 50, chunk: int = 1024):
        self.k, self.chunk = _count("k", k), chunk

    def _fit(self, train, labels):
        self.train = unit(train)
        self.kk = min(self.k, len(self.train))

    def _score(self, features):
        test = unit(features)
        out = np.empty(len(test))
        for start in range(0, len(test), self.chunk):
            block = test[start : start + self.chunk]
            # For unit vectors the squared distance is 2 - 2 cos: the k-th largest cosine.
            sims = block @ self.train.T
            kth = np.partition(sims, sims.shape[1] - self.kk, axis=1)[:, -self.kk]
            out[start : start + self.chunk] = -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
        return out


class KNNRelative(Scorer):
    """The GradMix authors' score: ``max_c s_c / sum_c' s_c'``, ``s_c`` the sum of
    the top-``k`` cosine similarities to class ``c``'s training features.
    Relative: a sample equally close to every class gets ``1 / C`` however far
    it is (and so does one with no similarity to any class)."""

    name, state = "knn_relative", ("train", "labels")

    def __init__(self, k: int = 3):
        self.k = _count("k", k)

    def _fit(self, train, labels):
        if labels is None or len(labels) != len(train):
            raise ValueError("knn_relative needs one train label per train feature.")
        self.train, self.labels = unit(train), labels

    def class_scores(self, features):
        return knn_class_scores(features, self.train, self.labels, self.k)

    def _score(self, features):
        s = self.class_scores(features)
        total = s.sum(axis=1)
        return np.divide(s.max(axis=1), total, out=np.full(total.shape, 1.0 / s.shape[1]),
                         where=total > 0)


class Mahalanobis(Scorer):
    """Lee et al. 2018: ``max_c -(f - mu_c)^T S^-1 (f - mu_c)``, class means
    ``mu_c`` and one covariance ``S`` of the class-centred training features."""

    name, state = "mahalanobis", ("means", "precision")

    def _fit(self, train, labels):
        from sklearn.covariance import EmpiricalCovariance

        if labels is None or len(labels) != len(train):
            raise ValueError("mahalanobis needs one train label per train feature.")
        classes = np.unique(labels)
        self.means = np.stack([train[labels == c].mean(axis=0) for c in classes])
        centred = train - self.means[np.searchsorted(classes, labels)]
        self.precision = EmpiricalCovariance(assume_centered=True).fit(centred).precision_

    def _score(self, features):
        distances = np.stack([np.sum(((features - mu) @ self.precision) * (features - mu), axis=1)
                              for mu in self.means], axis=1)
        return -distances.min(axis=1)


class ReAct(Scorer):
    """Sun et al. 2021: energy of the logits of ``min(f, c)``, ``c`` the
    ``percentile`` of all training activations."""

    name, needs_head, state = "react", True, ("clip",)

    def __init__(self, percentile: float = 90.0):
        self.percentile = _percentile("percentile", percentile)

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

    name, needs_head = "ash", True

    def __init__(self, percentile: float = 90.0):
        self.percentile = _percentile("percentile", percentile)

    def _score(self, features):
        kept, scale = _top_and_scale(features, self.percentile)
        return self.energy(kept * scale[:, None])


class SCALE(Scorer):
    """Xu et al. 2024, SCALE: ASH-S's scale without its pruning: the features
    times ``exp(s1 / s2)``, ``s2`` the sum of the activations above the
    sample's ``percentile`` (not scaled where that sum is 0); energy of the
    head's logits."""

    name, needs_head = "scale", True

    def __init__(self, percentile: float = 85.0):
        self.percentile = _percentile("percentile", percentile)

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

    name, needs_head, state = "vim", True, ("origin", "null_space", "alpha")

    def __init__(self, dim: int | None = None):
        self.dim = None if dim is None else _count("dim", dim)

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
        logits = train @ weights + bias
        self.alpha = logits.max(axis=1).mean() / residual.mean()

    def _score(self, features):
        residual = np.linalg.norm((features - self.origin) @ self.null_space, axis=1)
        return self.energy(features) - self.alpha * residual


SCORERS = {cls.name: cls for cls in (KNN, KNNRelative, Mahalanobis, ReAct, ASH, SCALE, ViM)}


def make_scorer(name: str, **options) -> Scorer:
    """A fresh scorer by name (:data:`SCORERS`), with its hyper-parameters."""
    if name not in SCORERS:
        raise ValueError(f"Unknown feature score {name!r}; choose from {tuple(SCORERS)}.")
    return SCORERS[name](**options)


def _fitted(name, features, train_features, train_labels=None, head=None, **options):
    return make_scorer(name, **options).fit(train_features, train_labels, head)(features)


def knn(features, train_features, train_labels=None, k: int = 50) -> np.ndarray:
    """Sun et al. 2022: minus the distance to the ``k``-th nearest L2-normalised
    training feature (fits and applies :class:`~keras_gradmix.osr.scorers.KNN`)."""
    return _fitted("knn", features, train_features, train_labels, k=k)


def knn_relative(features, train_features, train_labels, k: int = 3) -> np.ndarray:
    """The GradMix authors' kNN score, ``max_c s_c / sum_c' s_c'`` (see
    :class:`~keras_gradmix.osr.scorers.KNNRelative`)."""
    return _fitted("knn_relative", features, train_features, train_labels, k=k)


def mahalanobis(features, train_features, train_labels) -> np.ndarray:
    """``max_c -(f - mu_c)^T S^-1 (f - mu_c)`` (Lee et al. 2018; see
    :class:`~keras_gradmix.osr.scorers.Mahalanobis`)."""
    return _fitted("mahalanobis", features, train_features, train_labels)
