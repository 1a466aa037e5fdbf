"""Open-set metrics (higher score = "more likely known"; known = positive class).

Definitions follow the project's OSR protocol notes: AUROC, AUPR-In and
AUPR-Out from scikit-learn; FPR@95%TPR in the known-positive convention (the
share of unknowns accepted at the threshold that accepts 95 % of knowns);
OSCR (Dhamija et al. 2018), which scikit-learn lacks, written here.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _scores(name, values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError(f"{name} is empty; open-set metrics need known and unknown samples.")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return values


def fpr_at_tpr(known_scores, unknown_scores, tpr: float = 0.95) -> float:
    """Share of unknowns scoring >= the highest threshold that accepts ``tpr`` of knowns."""
    known = _scores("known_scores", known_scores)
    unknown = _scores("unknown_scores", unknown_scores)
    labels = np.r_[np.ones(known.size), np.zeros(unknown.size)]
    fpr, tprs, _ = roc_curve(labels, np.r_[known, unknown], drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def oscr_curve(known_scores, unknown_scores, known_correct) -> tuple[np.ndarray, np.ndarray]:
    """The OSCR curve ``(fpr, ccr)``, from (0, 0), one point per distinct threshold.

    ``CCR(d)`` = share of known samples classified correctly *and* scoring
    above ``d``; ``FPR(d)`` = share of unknown samples scoring above ``d``;
    ``d`` sweeps every observed score. Tied known and unknown scores cross
    together (a diagonal step), as in the ROC curve.
    """
    known = _scores("known_scores", known_scores)
    unknown = _scores("unknown_scores", unknown_scores)
    correct = np.asarray(known_correct, dtype=bool).ravel()
    if correct.shape != known.shape:
        raise ValueError(
            f"known_correct has {correct.size} entries for {known.size} known scores."
        )
    scores = np.r_[known, unknown]
    order = np.argsort(-scores, kind="stable")
    hits = np.r_[correct, np.zeros(unknown.size, bool)][order]
    false = np.r_[np.zeros(known.size, bool), np.ones(unknown.size, bool)][order]
    sorted_scores = scores[order]
    # One point per distinct threshold: after the last sample of each tie group.
    group_end = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    ccr = np.r_[0.0, np.cumsum(hits)[group_end] / known.size]
    fpr = np.r_[0.0, np.cumsum(false)[group_end] / unknown.size]
    return fpr, ccr


def oscr(known_scores, unknown_scores, known_correct) -> float:
    """Open-Set Classification Rate: area under :func:`oscr_curve` (CCR against
    FPR), trapezoid rule from (0, 0). At most the closed-set accuracy. ARPL's
    ``compute_oscr`` differs from this by at most one sample's share (its
    known/unknown counts are off by one position).
    """
    fpr, ccr = oscr_curve(known_scores, unknown_scores, known_correct)
    return float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0))


def evaluate_open_set(known_scores, unknown_scores, known_pred=None, known_true=None) -> dict:
    """All open-set metrics in one dict.

    Args:
        known_scores, unknown_scores: open-set scores of the known and unknown
            test samples, higher = "more likely known".
        known_pred, known_true: closed-set predictions and labels of the known
            samples; needed for ``accuracy`` and ``oscr``.

    Returns:
        ``auroc``, ``aupr_in`` (known positive), ``aupr_out`` (unknown
        positive, negated scores), ``fpr95``, and with predictions
        ``accuracy`` and ``oscr``. All in [0, 1].

    Examples:
        >>> evaluate_open_set([0.9, 0.8, 0.3], [0.2, 0.85], [1, 0, 2], [1, 0, 0])["auroc"]
        0.6666666666666666
    """
    known = _scores("known_scores", known_scores)
    unknown = _scores("unknown_scores", unknown_scores)
    labels = np.r_[np.ones(known.size), np.zeros(unknown.size)]
    scores = np.r_[known, unknown]
    results = {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
        "fpr95": fpr_at_tpr(known, unknown, 0.95),
    }
    if (known_pred is None) != (known_true is None):
        raise ValueError("Pass both known_pred and known_true, or neither.")
    if known_pred is not None:
        pred = np.asarray(known_pred).ravel()
        true = np.asarray(known_true).ravel()
        if pred.shape != known.shape or true.shape != known.shape:
            raise ValueError(
                f"known_pred ({pred.size}) and known_true ({true.size}) need one "
                f"entry per known score ({known.size})."
            )
        correct = pred == true
        results["accuracy"] = float(correct.mean())
        results["oscr"] = oscr(known, unknown, correct)
    return results
