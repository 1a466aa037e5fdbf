"""From a score to a decision: a rejection threshold, "unknown" predictions, CCR.

AUROC ranks; a deployment decides. :class:`OpenSetClassifier` fits the
threshold that accepts a target share of *held-out known* samples (known
recall, 95 % by default; never the test set), then predicts the closed-set
class or ``unknown_label``. :func:`ccr_at_fpr` reports the correct
classification rate at fixed shares of unknowns accepted (1, 5, 10 %), the
points of the OSCR curve a deployment picks from.

Examples:

```python
clf = OpenSetClassifier("mls", recall=0.95).fit(model, (x_val, y_val))
labels = clf.predict(model, x_new)          # class index, or -1 for "unknown"
clf.save("decision.json"); clf = OpenSetClassifier.load("decision.json")
```
"""

from __future__ import annotations

import json

import numpy as np

from keras_gradmix.osr.evaluation import (
    check_scores,
    collect_for,
    fit_scorers,
    merge_score_options,
    needs_features,
    score,
)
from keras_gradmix.osr.features import collect
from keras_gradmix.osr.scorers import SCORERS, make_scorer

FPRS = (0.01, 0.05, 0.1)


def fit_threshold(known_scores, recall: float = 0.95) -> float:
    """The largest threshold ``t`` with ``mean(known_scores >= t) >= recall``."""
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall!r}.")
    ordered = np.sort(np.asarray(known_scores, np.float64).ravel())
    if ordered.size == 0:
        raise ValueError("fit_threshold needs held-out known scores.")
    return float(ordered[int(np.floor((1.0 - recall) * ordered.size + 1e-9))])


def open_set_predict(scores, class_predictions, threshold: float, unknown_label: int = -1):
    """The class prediction where ``score >= threshold``, else ``unknown_label``."""
    return np.where(np.asarray(scores) >= threshold, np.asarray(class_predictions), unknown_label)


def ccr_at_fpr(known_scores, unknown_scores, known_correct, fprs=FPRS) -> dict:
    """Correct classification rate at each false positive rate in ``fprs``.

    For a target ``f``, the threshold is the lowest that accepts (score strictly
    above it) at most ``f`` of the unknowns; CCR is the share of known samples
    that are classified correctly and accepted.
    """
    known = np.asarray(known_scores, np.float64).ravel()
    unknown = np.sort(np.asarray(unknown_scores, np.float64).ravel())[::-1]
    correct = np.asarray(known_correct, bool).ravel()
    out = {}
    for fpr in fprs:
        allowed = int(np.floor(fpr * unknown.size + 1e-9))
        threshold = unknown[allowed] if allowed < unknown.size else -np.inf
        out[float(fpr)] = float(np.mean(correct & (known > threshold)))
    return out


class OpenSetClassifier:
    """A closed-set classifier plus a rejection threshold on one score.

    Args:
        score: a logit score (``"mls"``, ``"msp"``, ...) or a fitted feature
            score (``"knn"``, ``"vim"``, ...: then ``fit`` needs
            ``train_data`` and ``feature_layer``).
        recall: share of held-out known samples the threshold accepts.
        unknown_label: the prediction for rejected samples.
        feature_layer, score_options: as in
            :func:`keras_gradmix.osr.open_set_scores`.
    """

    def __init__(self, score: str = "mls", recall: float = 0.95, unknown_label: int = -1,
                 feature_layer: str | None = None, score_options: dict | None = None):
        if not 0 < recall <= 1:
            raise ValueError(f"recall must be in (0, 1], got {recall!r}.")
        self.score, self.recall, self.unknown_label = score, float(recall), int(unknown_label)
        self.feature_layer, self.score_options = feature_layer, score_options or {}
        self.threshold = None
        self.scorers = {}

    def _scores(self, model, data):
        layer = self.feature_layer if needs_features((self.score,)) else None
        part = collect_for(model, data, (self.score,), layer, 256, self._options)
        return score(self.score, part, self.scorers, self._options), part

    @property
    def _options(self):
        return merge_score_options(options={self.score: self.score_options} if self.score_options else None)

    def fit(self, model, known_data, train_data=None) -> "OpenSetClassifier":
        """Fits the feature scorer (if any) on ``train_data`` and the threshold
        on ``known_data`` (held-out known samples, not the test set)."""
        check_scores((self.score,), self.feature_layer, train_data)
        if self.score in SCORERS:
            train = collect(model, train_data, self.feature_layer)
            self.scorers = fit_scorers(model, (self.score,), train, self._options)
        scores, _ = self._scores(model, known_data)
        self.threshold = fit_threshold(scores, self.recall)
        return self

    def predict(self, model, data) -> np.ndarray:
        """Class indices, ``unknown_label`` where the score is below the threshold."""
        if self.threshold is None:
            raise ValueError("Fit the OpenSetClassifier first: clf.fit(model, held_out_known).")
        scores, part = self._scores(model, data)
        return open_set_predict(scores, part["logits"].argmax(axis=1), self.threshold,
                                self.unknown_label)

    def evaluate(self, model, known_data, unknown_data, fprs=FPRS) -> dict:
        """At the fitted threshold: known recall, unknowns rejected, accuracy of
        the accepted knowns; and CCR at each FPR in ``fprs``."""
        known_scores, known = self._scores(model, known_data)
        unknown_scores, _ = self._scores(model, unknown_data)
        correct = known["logits"].argmax(axis=1) == known["labels"]
        accepted = known_scores >= self.threshold
        return {
            "known_recall": float(accepted.mean()),
            "unknown_rejected": float((unknown_scores < self.threshold).mean()),
            "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else 0.0,
            **{f"ccr_fpr{100 * f:g}": v for f, v in
               ccr_at_fpr(known_scores, unknown_scores, correct, fprs).items()},
        }

    def get_config(self) -> dict:
        config = {"score": self.score, "recall": self.recall, "unknown_label": self.unknown_label,
                  "feature_layer": self.feature_layer, "score_options": self.score_options,
                  "threshold": self.threshold}
        if self.scorers:
            config["scorer_state"] = {key: value.tolist() for key, value in
                                      self.scorers[self.score].get_state().items()}
        return config

    @classmethod
    def from_config(cls, config: dict) -> "OpenSetClassifier":
        config = dict(config)
        threshold, state = config.pop("threshold"), config.pop("scorer_state", None)
        clf = cls(**config)
        clf.threshold = threshold
        if state is not None:
            clf.scorers = {clf.score: make_scorer(clf.score, **clf.score_options).set_state(state)}
        return clf

    def save(self, path: str) -> None:
        """As JSON (a feature score's fitted state too, e.g. kNN's features)."""
        with open(path, "w") as f:
            json.dump(self.get_config(), f)

    @classmethod
    def load(cls, path: str) -> "OpenSetClassifier":
        with open(path) as f:
            return cls.from_config(json.load(f))
