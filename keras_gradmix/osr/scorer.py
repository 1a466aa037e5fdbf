"""The fitted-score protocol: fit once on training data, then score any set.

OpenOOD's split between a postprocessor's ``setup`` (statistics of the
training data, the classifier head) and ``postprocess`` (scores of a test
set). Subclasses live in :mod:`~keras_gradmix.osr.distance_scores` and
:mod:`~keras_gradmix.osr.head_scores`; :mod:`~keras_gradmix.osr.scorers`
names them.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from keras_gradmix.osr.scores import features_2d


def percentile_option(name, value):
    if not 0 <= value < 100:
        raise ValueError(f"{name} must be in [0, 100), got {value!r}.")
    return float(value)


def count_option(name, value):
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


class Scorer:
    """Base class: ``fit(train_features, train_labels, head)``, then call."""

    name = ""
    needs_head = False
    inputs = "features"  # or "logits": what fit and __call__ take
    params: tuple = ()  # the hyper-parameters, __init__'s arguments
    state: tuple = ()  # the attributes ``fit`` sets: what get_state saves

    @property
    def options(self) -> dict:
        """The hyper-parameters, ``{name: value}`` (what a tuning chose)."""
        return {key: getattr(self, key) for key in self.params}

    def get_state(self) -> dict:
        """The fitted state, ``{name: array}`` (the head's ``W``, ``b`` as
        ``head_kernel``, ``head_bias``): what a saved decision stores."""
        if not getattr(self, "fitted", False):
            raise ValueError(f"Fit the {self.name!r} scorer before saving its state.")
        state = {key: np.asarray(getattr(self, key)) for key in self.state}
        if self.head is not None:
            state["head_kernel"], state["head_bias"] = self.head
        return state

    def set_state(self, state: dict) -> "Scorer":
        """Restores :meth:`get_state`'s output; the scorer is then fitted."""
        expected = set(self.state) | ({"head_kernel", "head_bias"} if self.needs_head else set())
        if expected - set(state):
            raise ValueError(f"The saved {self.name!r} state lacks {sorted(expected - set(state))}.")
        for key in self.state:
            value = np.asarray(state[key])
            setattr(self, key, value.item() if value.ndim == 0 else value)
        self.head = None
        if "head_kernel" in state:
            self.head = (np.asarray(state["head_kernel"], np.float64), np.asarray(state["head_bias"], np.float64))
        self.fitted = True
        return self

    def fit(self, train_features, train_labels=None, head=None) -> "Scorer":
        if self.needs_head and head is None:
            raise ValueError(
                f"The {self.name!r} score recomputes logits from the features: it needs the "
                f"classifier head (W, b), the final Dense layer the features feed.")
        self.head = None if head is None else (np.asarray(head[0], np.float64),
                                                np.asarray(head[1], np.float64))
        self._fit(features_2d(f"train_{self.inputs}", train_features),
                  None if train_labels is None else np.asarray(train_labels).ravel())
        self.fitted = True
        return self

    def _fit(self, train, labels):
        pass

    def __call__(self, features) -> np.ndarray:
        if not getattr(self, "fitted", False):
            raise ValueError(f"Fit the {self.name!r} scorer first: scorer.fit(train_features, ...).")
        return self._score(features_2d(self.inputs, features))

    def logits(self, features):
        """The head's logits of ``features``: ``features @ W + b``."""
        weights, bias = self.head
        if features.shape[1] != weights.shape[0]:
            raise ValueError(
                f"The features have {features.shape[1]} dims but the head takes "
                f"{weights.shape[0]}: pass the layer the final Dense layer reads.")
        return features @ weights + bias

    def energy(self, features):
        """``logsumexp`` of the head's logits of ``features``."""
        return logsumexp(self.logits(features), axis=1)
