"""Open set recognition and OOD detection: metrics, score functions, model
evaluation and a callback.

Convention: a higher score means "more likely known"; known samples are the
positive class for AUROC, AUPR-In and FPR@95%TPR.
"""

from keras_gradmix.osr.callback import OpenSetEvaluation
from keras_gradmix.osr.evaluation import (
    evaluate_model_open_set,
    metrics_by_score,
    open_set_scores,
)
from keras_gradmix.osr.features import collect
from keras_gradmix.osr.metrics import evaluate_open_set, fpr_at_tpr, oscr
from keras_gradmix.osr.ood import OOD_METRICS, evaluate_ood
from keras_gradmix.osr.plots import plot_open_set
from keras_gradmix.osr.probe import knn_predict, linear_probe
from keras_gradmix.osr.scores import (
    FEATURE_SCORES,
    LOGIT_SCORES,
    energy,
    entropy,
    knn,
    knn_class_scores,
    mahalanobis,
    mls,
    msp,
)

__all__ = [
    "FEATURE_SCORES",
    "LOGIT_SCORES",
    "OOD_METRICS",
    "OpenSetEvaluation",
    "collect",
    "energy",
    "entropy",
    "evaluate_model_open_set",
    "evaluate_ood",
    "evaluate_open_set",
    "fpr_at_tpr",
    "knn",
    "knn_class_scores",
    "knn_predict",
    "linear_probe",
    "mahalanobis",
    "metrics_by_score",
    "mls",
    "msp",
    "open_set_scores",
    "oscr",
    "plot_open_set",
]
