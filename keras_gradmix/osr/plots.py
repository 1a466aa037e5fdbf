"""A picture of open-set scores: ROC curves and known/unknown score histograms."""

from __future__ import annotations

import os

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from keras_gradmix.extras import require


def plot_open_set(known_scores: dict, unknown_scores: dict, path: str, title: str = "") -> str:
    """Writes a PNG with, per score, its ROC curve (known = positive) and the
    histograms of known and unknown scores; returns ``path``."""
    require("matplotlib", feature="plot_open_set")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(known_scores)
    figure = Figure(figsize=(3.2 * len(names), 6.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(names), squeeze=False)
    for j, name in enumerate(names):
        known, unknown = np.asarray(known_scores[name]), np.asarray(unknown_scores[name])
        labels = np.r_[np.ones(known.size), np.zeros(unknown.size)]
        fpr, tpr, _ = roc_curve(labels, np.r_[known, unknown])
        auroc = roc_auc_score(labels, np.r_[known, unknown])
        axes[0, j].plot(fpr, tpr)
        axes[0, j].plot([0, 1], [0, 1], linestyle=":", color="gray")
        axes[0, j].set(title=f"{name}: AUROC {auroc:.3f}", xlabel="FPR (unknown accepted)",
                       ylabel="TPR (known accepted)")
        bins = np.histogram_bin_edges(np.r_[known, unknown], bins=40)
        axes[1, j].hist(known, bins=bins, alpha=0.6, label="known", density=True)
        axes[1, j].hist(unknown, bins=bins, alpha=0.6, label="unknown", density=True)
        axes[1, j].set(xlabel=f"{name} score")
        axes[1, j].legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path)
    return os.fspath(path)
