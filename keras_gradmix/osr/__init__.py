"""Open set recognition and OOD detection: metrics, score functions, model
evaluation and a callback.

Convention: a higher score means "more likely known"; known samples are the
positive class for AUROC, AUPR-In and FPR@95%TPR. Logit scores are plain
functions; feature scores are fitted once (:mod:`keras_gradmix.osr.scorers`).
Needs SciPy and scikit-learn (the ``osr`` extra).
"""

from keras_gradmix.extras import require

require("scipy", "sklearn", feature="keras_gradmix.osr (open-set evaluation)")

from keras_gradmix.osr.callback import OpenSetEvaluation
from keras_gradmix.osr.decisions import (
    OpenSetClassifier,
    ccr_at_fpr,
    fit_threshold,
    open_set_predict,
)
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
from keras_gradmix.osr.scorers import SCORERS, Scorer, knn, knn_relative, mahalanobis, make_scorer
from keras_gradmix.osr.scores import (
    LOGIT_SCORES,
    energy,
    entropy,
    gen,
    knn_class_scores,
    mls,
    msp,
)

__all__ = [
    "LOGIT_SCORES",
    "OOD_METRICS",
    "OpenSetClassifier",
    "OpenSetEvaluation",
    "SCORERS",
    "Scorer",
    "ccr_at_fpr",
    "collect",
    "energy",
    "entropy",
    "evaluate_model_open_set",
    "evaluate_ood",
    "evaluate_open_set",
    "fit_threshold",
    "fpr_at_tpr",
    "gen",
    "knn",
    "knn_class_scores",
    "knn_relative",
    "knn_predict",
    "linear_probe",
    "mahalanobis",
    "make_scorer",
    "metrics_by_score",
    "mls",
    "msp",
    "open_set_predict",
    "open_set_scores",
    "oscr",
    "plot_open_set",
]
