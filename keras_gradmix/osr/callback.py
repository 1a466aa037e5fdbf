"""OpenSetEvaluation: open-set metrics in the training logs, every N epochs."""

from __future__ import annotations

import csv
import os

import keras

from keras_gradmix.osr.decisions import FPRS, OpenSetClassifier, ccr_at_fpr
from keras_gradmix.osr.evaluation import check_scores, metrics_by_score, open_set_scores
from keras_gradmix.osr.plots import plot_open_set
from keras_gradmix.transform import MASKING_METRICS

METRICS = ("accuracy", "auroc", "aupr_in", "aupr_out", "fpr95", "oscr")
CCRS = tuple(f"ccr_fpr{100 * f:g}" for f in FPRS)
HEADLINE = ("auroc", "oscr")  # logged by default: one line of verbose=2 stays readable


class OpenSetEvaluation(keras.callbacks.Callback):
    """Computes open-set metrics during ``fit`` and writes them into the logs.

    Every ``every`` epochs, for each score, the logs get
    ``f"{prefix}{metric}_{score}"`` (e.g. ``val_osr_auroc_mls``) for the
    ``log_metrics`` (by default ``auroc`` and ``oscr``; ``"all"`` adds
    ``accuracy, aupr_in, aupr_out, fpr95`` and the correct classification
    rate at 1, 5 and 10 % of unknowns accepted, ``ccr_fpr1``, ``ccr_fpr5``,
    ``ccr_fpr10``), so they show
    in ``History``, the progress bar, ``CSVLogger`` and TensorBoard, and can
    drive ``ModelCheckpoint``/``EarlyStopping`` — list this callback *before*
    those. Epochs it skips (``every > 1``) have no such keys; ``CSVLogger``
    fixes its columns at the first epoch, so use ``csv_path`` (or
    ``every=1``) for a CSV. Works with a ``GradMixModel`` and a plain model.

    Args:
        known_data: test samples of the known classes, ``(x, y)`` or a
            ``tf.data.Dataset`` of ``(x, y)`` batches, labels ``0..K-1``.
        unknown_data: test samples of unknown classes (labels ignored).
        scores: logit scores (``msp, mls, energy, entropy, gen``) or fitted
            feature scores (``knn, knn_relative, mahalanobis, react, ash,
            scale, vim``; fitted once per evaluation on ``train_data``).
        every: evaluate after every ``every``-th epoch (and not otherwise).
        log_metrics: the metrics written into the logs, a tuple of the
            names above or ``"all"``. ``history`` and ``csv_path`` always
            get every metric.
        csv_path: optional CSV file; one row per (epoch, score) is appended
            with every metric and the epoch's ``gradmix_masked,
            gradmix_flat, gradmix_area`` (empty for a plain model).
        plot_dir: optional folder for ``osr_epoch_001.png``, ...: ROC curves
            and known/unknown score histograms.
        train_data: known-class training samples ``(x, y)``, needed by the
            feature scores.
        feature_layer: layer path of the features for those scores.
        k: neighbours of ``knn_relative`` and of k-NN predictions;
        temperature: of ``energy``; score_options: ``{score: {option: value}}``.
        predictions: closed-set predictions from ``"logits"`` (arg-max of the
            model's outputs) or ``"knn"`` (k-NN vote on the ``feature_layer``
            features: for encoders without a classification head).
        prefix: of the log keys.
        decision: an :class:`~keras_gradmix.osr.decisions.OpenSetClassifier`
            to fit on ``held_out`` (known samples, not the test set) at every
            evaluation; its threshold's ``known_recall`` and
            ``unknown_rejected`` on the test data enter the logs
            (``val_osr_known_recall``...), and with ``decision_path`` it is
            saved as JSON after each evaluation.

    Examples:
        >>> callbacks = [OpenSetEvaluation((x_known, y_known), x_unknown, every=5),
        ...              keras.callbacks.EarlyStopping("val_osr_auroc_mls", mode="max")]
    """

    def __init__(self, known_data, unknown_data, scores=("msp", "mls"), every: int = 1,
                 csv_path: str | None = None, plot_dir: str | None = None, *,
                 train_data=None, feature_layer: str | None = None, k: int = 3,
                 temperature: float = 1.0, prefix: str = "val_osr_", batch_size: int = 256,
                 predictions: str = "logits", score_options: dict | None = None,
                 decision: OpenSetClassifier | None = None, held_out=None,
                 decision_path: str | None = None, log_metrics=HEADLINE):
        super().__init__()
        self.scores = check_scores(scores, feature_layer, train_data, predictions)
        every_metric = (*METRICS, *CCRS)
        log_metrics = every_metric if log_metrics == "all" else tuple(log_metrics)
        unknown = [m for m in log_metrics if m not in every_metric]
        if unknown:
            raise ValueError(f"log_metrics must be 'all' or names from {every_metric}; "
                             f"got {unknown}.")
        self.log_metrics = log_metrics
        if int(every) != every or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}.")
        self.known_data, self.unknown_data, self.train_data = known_data, unknown_data, train_data
        self.every, self.csv_path, self.plot_dir = int(every), csv_path, plot_dir
        self.options = dict(feature_layer=feature_layer, train_data=train_data, k=k,
                            temperature=temperature, batch_size=batch_size,
                            predictions=predictions, score_options=score_options)
        if decision is not None and held_out is None:
            raise ValueError("decision needs held_out=(x, y): held-out known samples to fit "
                             "its threshold on (not the test set).")
        self.decision, self.held_out, self.decision_path = decision, held_out, decision_path
        self.prefix = prefix
        self.history: list[dict] = []  # one {"epoch", "score", metrics...} row per evaluation

    def evaluate(self) -> dict:
        """``{score: {metric: value}}`` for the model now."""
        raw = open_set_scores(self.model, self.known_data, self.unknown_data, self.scores,
                              **self.options)
        self._last_raw = raw
        results = metrics_by_score(raw)
        correct = raw["known_pred"] == raw["known_true"]
        for name, metrics in results.items():
            for fpr, ccr in ccr_at_fpr(raw["known"][name], raw["unknown"][name], correct, FPRS).items():
                metrics[f"ccr_fpr{100 * fpr:g}"] = ccr
        return results

    def decide(self, logs):
        """Fits the decision's threshold on the held-out knowns; logs what it does."""
        self.decision.fit(self.model, self.held_out, self.options["train_data"])
        outcome = self.decision.evaluate(self.model, self.known_data, self.unknown_data)
        for key in ("known_recall", "unknown_rejected", "accepted_accuracy"):
            if logs is not None:
                logs[f"{self.prefix}{key}"] = outcome[key]
        if self.decision_path is not None:
            self.decision.save(self.decision_path)
        return outcome

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        results = self.evaluate()
        # What GradMix did this epoch (empty for a plain model), beside the scores.
        masking = {k: float(logs[k]) for k in MASKING_METRICS if logs and k in logs}
        for name, metrics in results.items():
            for metric, value in metrics.items():
                if logs is not None and metric in self.log_metrics:
                    logs[f"{self.prefix}{metric}_{name}"] = value
            self.history.append({"epoch": epoch + 1, "score": name, **metrics, **masking})
        if self.decision is not None:
            self.decide(logs)
        if self.csv_path is not None:
            self._write_csv(epoch + 1, results, masking)
        if self.plot_dir is not None:
            raw = self._last_raw
            plot_open_set(raw["known"], raw["unknown"],
                          os.path.join(self.plot_dir, f"osr_epoch_{epoch + 1:03d}.png"),
                          title=f"epoch {epoch + 1}",
                          known_correct=raw["known_pred"] == raw["known_true"])

    def _write_csv(self, epoch, results, masking):
        new = not os.path.exists(self.csv_path)
        directory = os.path.dirname(os.fspath(self.csv_path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            columns = [*METRICS, *CCRS]
            if new:
                writer.writerow(["epoch", "score", *columns, *MASKING_METRICS])
            done = [f"{masking[m]:.6f}" if m in masking else "" for m in MASKING_METRICS]
            for name, metrics in results.items():
                writer.writerow([epoch, name, *(f"{metrics[m]:.6f}" for m in columns), *done])
