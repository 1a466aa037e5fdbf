"""Pictures of open-set scores: ROC and OSCR curves, known/unknown score
histograms, and a reliability diagram."""

from __future__ import annotations

import os

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from keras_gradmix.extras import require
from keras_gradmix.osr.calibration import ece, reliability
from keras_gradmix.osr.metrics import oscr_curve


def _figure(width, height):
    require("matplotlib", feature="keras_gradmix.osr plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> str:
    figure.tight_layout()
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path)
    return os.fspath(path)


def plot_open_set(known_scores: dict, unknown_scores: dict, path: str, title: str = "",
                  known_correct=None) -> str:
    """Writes a PNG with, per score, its ROC curve (known = positive), with
    ``known_correct`` (the known samples' closed-set correctness) its OSCR
    curve (correct classification rate against false positive rate) beside
    it, and the histograms of known and unknown scores; returns ``path``."""
    names = list(known_scores)
    rows = 2 if known_correct is None else 3
    figure = _figure(3.2 * len(names), 3.0 * rows)
    axes = figure.subplots(rows, len(names), squeeze=False)
    for j, name in enumerate(names):
        known, unknown = np.asarray(known_scores[name]), np.asarray(unknown_scores[name])
        labels = np.r_[np.ones(known.size), np.zeros(unknown.size)]
        fpr, tpr, _ = roc_curve(labels, np.r_[known, unknown])
        auroc = roc_auc_score(labels, np.r_[known, unknown])
        axes[0, j].plot(fpr, tpr)
        axes[0, j].plot([0, 1], [0, 1], linestyle=":", color="gray")
        axes[0, j].set(title=f"{name}: AUROC {auroc:.3f}", xlabel="FPR (unknown accepted)",
                       ylabel="TPR (known accepted)")
        if known_correct is not None:
            fpr, ccr = oscr_curve(known, unknown, known_correct)
            area = float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0))
            axes[1, j].plot(fpr, ccr)
            axes[1, j].axhline(np.mean(known_correct), linestyle=":", color="gray")
            axes[1, j].set(title=f"{name}: OSCR {area:.3f}", xlabel="FPR (unknown accepted)",
                           ylabel="CCR (known, correct, accepted)", ylim=(0, 1.02))
        bins = np.histogram_bin_edges(np.r_[known, unknown], bins=40)
        axes[-1, j].hist(known, bins=bins, alpha=0.6, label="known", density=True)
        axes[-1, j].hist(unknown, bins=bins, alpha=0.6, label="unknown", density=True)
        axes[-1, j].set(xlabel=f"{name} score")
        axes[-1, j].legend(fontsize=7)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_reliability(confidences, correct, path: str, bins: int = 15, title: str = "") -> str:
    """Writes a reliability diagram (accuracy against confidence per bin, the
    diagonal being perfect calibration, the bin counts below); returns ``path``."""
    table = reliability(confidences, correct, bins)
    figure = _figure(4.0, 5.0)
    top, bottom = figure.subplots(2, 1, gridspec_kw={"height_ratios": (3, 1)}, sharex=True)
    centres = (table["edges"][1:] + table["edges"][:-1]) / 2
    width = 1.0 / bins
    used = table["count"] > 0
    top.bar(centres[used], table["accuracy"][used], width=width, edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], linestyle=":", color="gray")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
            title=title or f"ECE {ece(confidences, correct, bins):.3f}")
    bottom.bar(centres, table["count"], width=width, color="gray")
    bottom.set(xlabel="confidence (max softmax)", ylabel="count")
    return _save(figure, path)
