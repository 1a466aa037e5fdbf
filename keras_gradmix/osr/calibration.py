"""Calibration and selective classification of the known classes.

From the closed-set predictions an open-set evaluation already has (the
softmax of the known test images' logits): the expected calibration error
with its reliability diagram, and the risk-coverage curve with its area.

==========================  ===================================================
:func:`ece`                 ``sum_b n_b / N * |acc_b - conf_b|`` over ``bins``
                            equal-width confidence bins of ``[0, 1]`` (Guo et
                            al. 2017); bin ``b`` holds ``(b/B, (b+1)/B]``, the
                            first also 0
:func:`reliability`         per bin: count, mean confidence, accuracy
:func:`risk_coverage`       accept the most confident first: coverage and
                            selective risk (error rate among the accepted) at
                            each distinct confidence
:func:`aurc`                area under the risk-coverage curve, Geifman et al.
                            2019: the mean over samples of the risk when the
                            samples at least as confident as it are accepted
==========================  ===================================================

References:
    - Guo, Pleiss, Sun, Weinberger. "On Calibration of Modern Neural
      Networks". ICML 2017.
    - Geifman, Uziel, El-Yaniv. "Bias-Reduced Uncertainty Estimation for Deep
      Neural Classifiers". ICLR 2019 (AURC).
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax


def _inputs(confidences, correct, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray]:
    confidences = np.asarray(confidences, dtype=np.float64).ravel()
    raw = np.asarray(correct).ravel()
    if confidences.size == 0:
        raise ValueError("confidences is empty; calibration needs known samples.")
    if raw.shape != confidences.shape:
        raise ValueError(f"correct has {raw.size} entries for {confidences.size} confidences.")
    if not np.isfinite(confidences).all():
        raise ValueError("confidences contains NaN or infinite values.")
    if raw.dtype != bool and not np.isin(raw, (0, 1)).all():
        raise ValueError(
            f"correct must say, per sample, whether the prediction was right (booleans or "
            f"0/1), got values such as {np.unique(raw)[:4].tolist()}: class labels? Pass "
            f"predictions == labels.")
    if probabilities and (confidences.min() < 0 or confidences.max() > 1):
        raise ValueError(
            f"confidences must be probabilities in [0, 1] for calibration, got values in "
            f"[{confidences.min():.4g}, {confidences.max():.4g}]: percentages or logits? Divide "
            f"percentages by 100; take the softmax of logits (confidences_from_logits).")
    return confidences, raw.astype(bool)


def confidences_from_logits(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(max softmax probability, prediction == label)`` of ``(N, C)`` logits."""
    logits = np.asarray(logits, dtype=np.float64)
    probabilities = softmax(logits, axis=1)
    return probabilities.max(axis=1), logits.argmax(axis=1) == np.asarray(labels).ravel()


def reliability(confidences, correct, bins: int = 15) -> dict:
    """Equal-width confidence bins: ``{"edges": (B+1,), "count": (B,),
    "confidence": (B,), "accuracy": (B,)}`` (NaN in empty bins)."""
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}.")
    confidences, correct = _inputs(confidences, correct, probabilities=True)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # Right-closed bins (b/B, (b+1)/B]; a confidence of 0 goes to the first.
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, int(bins) - 1)
    count = np.bincount(index, minlength=int(bins))
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, confidences, int(bins)) / count
        accuracy = np.bincount(index, correct.astype(np.float64), int(bins)) / count
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy}


def ece(confidences, correct, bins: int = 15) -> float:
    """Expected calibration error in [0, 1] (15 bins as Guo et al.)."""
    table = reliability(confidences, correct, bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float(np.sum(table["count"][used] * gaps) / table["count"].sum())


def risk_coverage(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage, risk)`` at each distinct confidence, most confident first;
    tied confidences are accepted together."""
    confidences, correct = _inputs(confidences, correct)
    order = np.argsort(-confidences, kind="stable")
    sorted_conf = confidences[order]
    group_end = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]
    accepted = np.arange(1, confidences.size + 1)[group_end]
    errors = np.cumsum(~correct[order])[group_end]
    return accepted / confidences.size, errors / accepted


def aurc(confidences, correct) -> float:
    """Area under the risk-coverage curve, in [0, 1]; lower is better. A
    sample in a tie group takes the group's risk."""
    confidences, correct = _inputs(confidences, correct)
    coverage, risk = risk_coverage(confidences, correct)
    group_sizes = np.diff(np.r_[0, np.round(coverage * confidences.size).astype(int)])
    return float(np.sum(group_sizes * risk) / confidences.size)


def calibration_metrics(logits, labels, bins: int = 15) -> dict:
    """``{"ece", "aurc"}`` of the known test images' logits and labels."""
    confidences, correct = confidences_from_logits(logits, labels)
    return {"ece": ece(confidences, correct, bins), "aurc": aurc(confidences, correct)}
