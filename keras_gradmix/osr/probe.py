"""Closed-set classifiers on frozen features: k-NN vote and a linear probe.

For encoders trained without a classification head (e.g. supervised
contrastive training), the closed-set prediction comes from the features.
"""

from __future__ import annotations

import numpy as np

from keras_gradmix.osr.scores import features_2d, unit
from keras_gradmix.osr.scores import knn_class_scores


def knn_predict(features, train_features, train_labels, k: int = 3) -> np.ndarray:
    """The class whose ``k`` most similar training features (cosine) have the
    largest similarity sum: the arg-max of :func:`knn_class_scores`."""
    classes = np.unique(np.asarray(train_labels).ravel())
    return classes[knn_class_scores(features, train_features, train_labels, k).argmax(axis=1)]


def linear_probe(train_features, train_labels, features, *, C: float = 1.0,
                 max_iter: int = 2000) -> np.ndarray:
    """Predicted classes of ``features`` from a multinomial logistic regression
    fitted on the L2-normalised ``train_features`` (4-D feature maps are
    averaged over space first)."""
    from sklearn.linear_model import LogisticRegression

    train = features_2d("train_features", train_features)
    labels = np.asarray(train_labels).ravel()
    probe = LogisticRegression(C=C, max_iter=max_iter).fit(unit(train), labels)
    return probe.predict(unit(features_2d("features", features)))
