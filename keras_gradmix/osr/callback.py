"""OpenSetEvaluation: open-set metrics in the training logs, every N epochs."""

from __future__ import annotations

import csv
import os

import keras

from keras_gradmix.osr.evaluation import check_scores, metrics_by_score, open_set_scores
from keras_gradmix.osr.plots import plot_open_set

METRICS = ("accuracy", "auroc", "aupr_in", "aupr_out", "fpr95", "oscr")


class OpenSetEvaluation(keras.callbacks.Callback):
    """Computes open-set metrics during ``fit`` and writes them into the logs.

    Every ``every`` epochs, for each score, the logs get
    ``f"{prefix}{metric}_{score}"`` (e.g. ``val_osr_auroc_mls``) for the
    metrics ``accuracy, auroc, aupr_in, aupr_out, fpr95, oscr``, so they show
    in ``History``, the progress bar, ``CSVLogger`` and TensorBoard, and can
    drive ``ModelCheckpoint``/``EarlyStopping`` — list this callback *before*
    those. Epochs it skips (``every > 1``) have no such keys; ``CSVLogger``
    fixes its columns at the first epoch, so use ``csv_path`` (or
    ``every=1``) for a CSV. Works with a ``GradMixModel`` and a plain model.

    Args:
        known_data: test samples of the known classes, ``(x, y)`` or a
            ``tf.data.Dataset`` of ``(x, y)`` batches, labels ``0..K-1``.
        unknown_data: test samples of unknown classes (labels ignored).
        scores: names among ``msp, mls, energy, entropy, knn, mahalanobis``.
        every: evaluate after every ``every``-th epoch (and not otherwise).
        csv_path: optional CSV file; one row per (epoch, score) is appended.
        plot_dir: optional folder for ``osr_epoch_001.png``, ...: ROC curves
            and known/unknown score histograms.
        train_data: known-class training samples ``(x, y)``, needed by the
            feature scores ``knn`` and ``mahalanobis``.
        feature_layer: layer path of the features for those scores.
        k: neighbours of ``knn``; temperature: of ``energy``.
        predictions: closed-set predictions from ``"logits"`` (arg-max of the
            model's outputs) or ``"knn"`` (k-NN vote on the ``feature_layer``
            features: for encoders without a classification head).
        prefix: of the log keys.

    Example:
        >>> callbacks = [OpenSetEvaluation((x_known, y_known), x_unknown, every=5),
        ...              keras.callbacks.EarlyStopping("val_osr_auroc_mls", mode="max")]
    """

    def __init__(self, known_data, unknown_data, scores=("msp", "mls"), every: int = 1,
                 csv_path: str | None = None, plot_dir: str | None = None, *,
                 train_data=None, feature_layer: str | None = None, k: int = 3,
                 temperature: float = 1.0, prefix: str = "val_osr_", batch_size: int = 256,
                 predictions: str = "logits"):
        super().__init__()
        self.scores = check_scores(scores, feature_layer, train_data, predictions)
        if int(every) != every or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}.")
        self.known_data, self.unknown_data, self.train_data = known_data, unknown_data, train_data
        self.every, self.csv_path, self.plot_dir = int(every), csv_path, plot_dir
        self.options = dict(feature_layer=feature_layer, train_data=train_data, k=k,
                            temperature=temperature, batch_size=batch_size,
                            predictions=predictions)
        self.prefix = prefix
        self.history: list[dict] = []  # one {"epoch", "score", metrics...} row per evaluation

    def evaluate(self) -> dict:
        """``{score: {metric: value}}`` for the model now."""
        raw = open_set_scores(self.model, self.known_data, self.unknown_data, self.scores,
                              **self.options)
        self._last_raw = raw
        return metrics_by_score(raw)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        results = self.evaluate()
        for name, metrics in results.items():
            for metric in METRICS:
                if logs is not None:
                    logs[f"{self.prefix}{metric}_{name}"] = metrics[metric]
            self.history.append({"epoch": epoch + 1, "score": name, **metrics})
        if self.csv_path is not None:
            self._write_csv(epoch + 1, results)
        if self.plot_dir is not None:
            raw = self._last_raw
            plot_open_set(raw["known"], raw["unknown"],
                          os.path.join(self.plot_dir, f"osr_epoch_{epoch + 1:03d}.png"),
                          title=f"epoch {epoch + 1}")

    def _write_csv(self, epoch, results):
        new = not os.path.exists(self.csv_path)
        directory = os.path.dirname(os.fspath(self.csv_path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", "score", *METRICS])
            for name, metrics in results.items():
                writer.writerow([epoch, name, *(f"{metrics[m]:.6f}" for m in METRICS)])
