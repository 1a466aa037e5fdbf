"""Open set recognition and OOD detection: metrics, score functions, model
evaluation and a callback.

Convention: a higher score means "more likely known"; known samples are the
positive class for AUROC, AUPR-In and FPR@95%TPR. Logit scores are plain
functions; feature scores are fitted once (:mod:`keras_gradmix.osr.scorers`).
Needs SciPy and scikit-learn (the ``osr`` extra).
"""

from keras_gradmix.extras import require

require("scipy", "sklearn", feature="keras_gradmix.osr (open-set evaluation)")

from keras_gradmix.osr import calibration
from keras_gradmix.osr.calibration import aurc, ece, reliability, risk_coverage
from keras_gradmix.osr.callback import OpenSetEvaluation
from keras_gradmix.osr.decisions import (
    OpenSetClassifier,
    ccr_at_fpr,
    fit_threshold,
    open_set_predict,
)
from keras_gradmix.osr.evaluation import (
    calibration_by_score,
    evaluate_model_open_set,
    metrics_by_score,
    open_set_scores,
    per_class_metrics,
)
from keras_gradmix.osr.features import collect
from keras_gradmix.osr.full_spectrum import evaluate_full_spectrum
from keras_gradmix.osr.metrics import evaluate_open_set, fpr_at_tpr, oscr, oscr_curve
from keras_gradmix.osr.odin import odin
from keras_gradmix.osr.ood import OOD_METRICS, evaluate_ood
from keras_gradmix.osr.plots import plot_open_set, plot_reliability
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
from keras_gradmix.osr.tuning import GRIDS, tune_scores, tuned_options

__all__ = [
    "GRIDS",
    "LOGIT_SCORES",
    "OOD_METRICS",
    "OpenSetClassifier",
    "OpenSetEvaluation",
    "SCORERS",
    "Scorer",
    "aurc",
    "calibration",
    "calibration_by_score",
    "ccr_at_fpr",
    "collect",
    "ece",
    "energy",
    "entropy",
    "evaluate_full_spectrum",
    "evaluate_model_open_set",
    "evaluate_ood",
    "evaluate_open_set",
    "fit_threshold",
    "fpr_at_tpr",
    "gen",
    "knn",
    "knn_class_scores",
    "knn_predict",
    "knn_relative",
    "linear_probe",
    "mahalanobis",
    "make_scorer",
    "metrics_by_score",
    "mls",
    "msp",
    "odin",
    "open_set_predict",
    "open_set_scores",
    "oscr",
    "oscr_curve",
    "per_class_metrics",
    "plot_open_set",
    "plot_reliability",
    "reliability",
    "risk_coverage",
    "tune_scores",
    "tuned_options",
]
