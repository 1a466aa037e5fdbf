"""Fitted scores from distances in feature space: kNN, Mahalanobis, RMDS.

They need the training features of the known classes (and their labels,
except ``knn``), never the classifier head.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import EmpiricalCovariance

from keras_gradmix.osr.scorer import Scorer, count_option
from keras_gradmix.osr.scores import knn_class_scores, unit


class KNN(Scorer):
    """Sun et al. 2022: ``-|| z - z_(k) ||`` of L2-normalised features (an
    all-zero feature stays zero), ``z_(k)`` the ``k``-th nearest normalised
    training feature."""

    name, params, state = "knn", ("k",), ("train", "kk")

    def __init__(self, k: int = 50, chunk: int = 1024):
        self.k, self.chunk = count_option("k", k), chunk

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

    name, params, state = "knn_relative", ("k",), ("train", "labels")

    def __init__(self, k: int = 3):
        self.k = count_option("k", k)

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


def _precision(centred):
    return EmpiricalCovariance(assume_centered=True).fit(centred).precision_


def _squared_distances(features, means, precision):
    """``(N, M)``: ``(f - mu_m)^T P (f - mu_m)`` for each of the ``M`` means."""
    return np.stack([np.sum(((features - mu) @ precision) * (features - mu), axis=1)
                     for mu in means], axis=1)


class Mahalanobis(Scorer):
    """Lee et al. 2018: ``max_c -(f - mu_c)^T S^-1 (f - mu_c)``, class means
    ``mu_c`` and one covariance ``S`` of the class-centred training features."""

    name, state = "mahalanobis", ("means", "precision")

    def _fit(self, train, labels):
        if labels is None or len(labels) != len(train):
            raise ValueError(f"{self.name} needs one train label per train feature.")
        classes = np.unique(labels)
        self.means = np.stack([train[labels == c].mean(axis=0) for c in classes])
        self.precision = _precision(train - self.means[np.searchsorted(classes, labels)])

    def _score(self, features):
        return -_squared_distances(features, self.means, self.precision).min(axis=1)


class RMDS(Mahalanobis):
    """Ren et al. 2021, relative Mahalanobis: ``max_c -(MD_c(f) - MD_0(f))``,
    ``MD_c`` as :class:`Mahalanobis`, ``MD_0`` the distance to one Gaussian
    of all training features (their mean and covariance): the part of the
    distance every class shares is discounted (OpenOOD's ``rmds``)."""

    name, state = "rmds", ("means", "precision", "background_mean", "background_precision")

    def _fit(self, train, labels):
        super()._fit(train, labels)
        self.background_mean = train.mean(axis=0)
        self.background_precision = _precision(train - self.background_mean)

    def _score(self, features):
        background = _squared_distances(features, self.background_mean[None], self.background_precision)
        return (background - _squared_distances(features, self.means, self.precision)).max(axis=1)
