"""Fitted open-set / OOD scores by name: fit once on training data, apply to any set.

A scorer is made by name (:func:`make_scorer`), fitted once with
:meth:`~keras_gradmix.osr.scorer.Scorer.fit` and then called on any number of
sets; nothing is refit per set. Higher = "more likely known" for every score.
NumPy in, NumPy out. OpenOOD's definitions:

==================  =========================================================
``knn``             Sun et al. 2022: minus the distance to the ``k``-th nearest
                    L2-normalised training feature (``k=50``)
``knn_relative``    the GradMix authors' per-class ratio of top-``k`` cosine
                    similarities (``k=3``): relative, blind to distance
``mahalanobis``     Lee et al. 2018: minus the smallest class-conditional
                    Mahalanobis distance, one tied covariance
``rmds``            Ren et al. 2021: the same minus the distance to one
                    Gaussian of all training features (relative Mahalanobis)
``react``           Sun et al. 2021: features clipped at their ``percentile``
                    (90) over the training set, energy of the head's logits
``ash``             Djurisic et al. 2023, ASH-S: per sample, activations below
                    the ``percentile`` (90) zeroed, the rest scaled by
                    ``exp(sum(all) / sum(kept))``, energy of the head's logits
``scale``           Xu et al. 2024, SCALE: no pruning, features scaled by
                    ``exp(sum(all) / sum(above the percentile (85)))``, energy
``vim``             Wang et al. 2022, ViM: energy minus ``alpha`` times the norm
                    of the feature's residual off the principal subspace
``she``             Zhang et al. 2023, SHE: inner product with the mean
                    correctly classified training feature of the predicted class
``fdbd``            Liu & Qin 2024, fDBD: distances to the decision boundaries
                    over the distance to the mean training feature
``klm``             Hendrycks et al. 2022, KL matching: minus the smallest KL
                    divergence of the softmax to a class's mean softmax (logits)
==================  =========================================================

``knn*``, ``mahalanobis`` and ``rmds``: :mod:`~keras_gradmix.osr.distance_scores`;
the scores that use the classifier head ``(W, b)`` (``react`` ... ``fdbd``;
their features must be what the final ``Dense`` layer takes) and ``klm``:
:mod:`~keras_gradmix.osr.head_scores`.
"""

from __future__ import annotations

import numpy as np

from keras_gradmix.osr.distance_scores import KNN, RMDS, KNNRelative, Mahalanobis
from keras_gradmix.osr.head_scores import ASH, FDBD, KLM, SCALE, SHE, ReAct, ViM
from keras_gradmix.osr.scorer import Scorer

__all__ = ["SCORERS", "Scorer", "knn", "knn_relative", "mahalanobis", "make_scorer"]


SCORERS = {cls.name: cls for cls in (KNN, KNNRelative, Mahalanobis, RMDS, ReAct, ASH, SCALE, ViM,
                                     SHE, FDBD, KLM)}


def make_scorer(name: str, **options) -> Scorer:
    """A fresh scorer by name (:data:`SCORERS`), with its hyper-parameters."""
    if name not in SCORERS:
        raise ValueError(f"Unknown fitted score {name!r}; choose from {tuple(SCORERS)}.")
    return SCORERS[name](**options)


def _fitted(name, features, train_features, train_labels=None, head=None, **options):
    return make_scorer(name, **options).fit(train_features, train_labels, head)(features)


def knn(features, train_features, train_labels=None, k: int = 50) -> np.ndarray:
    """Sun et al. 2022: minus the distance to the ``k``-th nearest L2-normalised
    training feature (fits and applies :class:`~keras_gradmix.osr.distance_scores.KNN`)."""
    return _fitted("knn", features, train_features, train_labels, k=k)


def knn_relative(features, train_features, train_labels, k: int = 3) -> np.ndarray:
    """The GradMix authors' kNN score, ``max_c s_c / sum_c' s_c'`` (see
    :class:`~keras_gradmix.osr.distance_scores.KNNRelative`)."""
    return _fitted("knn_relative", features, train_features, train_labels, k=k)


def mahalanobis(features, train_features, train_labels) -> np.ndarray:
    """``max_c -(f - mu_c)^T S^-1 (f - mu_c)`` (Lee et al. 2018; see
    :class:`~keras_gradmix.osr.distance_scores.Mahalanobis`)."""
    return _fitted("mahalanobis", features, train_features, train_labels)
