"""Running a model over evaluation data: logits, labels and (optionally) features."""

from __future__ import annotations

from typing import Iterator

import keras
import numpy as np

from keras_gradmix.model import GradMixModel
from keras_gradmix.osr.odin import odin
from keras_gradmix.tap import LayerTap, resolve_layer


MODEL_SCORES = {"odin": odin}


def iter_batches(data, batch_size: int = 256) -> Iterator[tuple]:
    """Yields ``(x, y)`` NumPy batches (``y`` None when absent) from arrays,
    an ``(x, y)`` pair of arrays, or a ``tf.data.Dataset`` of ``x``, ``(x, y)``
    or ``(x, y, sample_weight)`` batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not hasattr(data, "element_spec"):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"(x, y) have {len(x)} images and {len(y)} labels.")
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
    elif hasattr(data, "element_spec"):  # tf.data
        for element in data.as_numpy_iterator():
            if isinstance(element, tuple):
                yield element[0], (element[1] if len(element) > 1 else None)
            else:
                yield element, None
    else:
        x = np.asarray(data)
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], None


def class_labels(y) -> np.ndarray:
    """Integer class labels from integer or one-hot (also mixed, soft) labels."""
    y = np.asarray(y).reshape(len(y), -1)
    return y.argmax(axis=1) if y.shape[1] > 1 else y[:, 0]


def inner_model(model):
    # A GradMixModel's layers live in the model it wraps.
    return model.model if isinstance(model, GradMixModel) else model


def collect(model, data, feature_layer: str | None = None, batch_size: int = 256,
            model_scores: dict | None = None) -> dict:
    """Logits, labels and features of ``data``, in inference mode.

    ``feature_layer`` is a layer path as in ``GradMixModel`` (e.g. "gap" or
    "backbone/pool"); 4-D outputs are averaged over space by the scores.
    ``model_scores``: ``{"odin": options}`` also computes the scores that
    need the model and the images (:func:`keras_gradmix.osr.odin.odin`).

    Returns ``{"logits": (N, C), "labels": (N,) or None, "features": (N, ...)
    or None, "scores": {name: (N,)}}``.
    """
    layer = None if feature_layer is None else resolve_layer(inner_model(model), feature_layer, kind="features")
    model_scores = model_scores or {}
    logits, labels, features = [], [], []
    computed = {name: [] for name in model_scores}
    for x, y in iter_batches(data, batch_size):
        for name, options in model_scores.items():
            computed[name].append(MODEL_SCORES[name](model, x, **options))
        if layer is None:
            out = model.predict_on_batch(x)
        else:
            with LayerTap({feature_layer: layer}) as tap:
                out = model(x, training=False)
            features.append(keras.ops.convert_to_numpy(tap.outputs[feature_layer][-1]))
        logits.append(keras.ops.convert_to_numpy(out))
        if y is not None:
            labels.append(class_labels(y))
    if not logits:
        raise ValueError("The evaluation data is empty.")
    return {
        "logits": np.concatenate(logits).astype(np.float64),
        "labels": np.concatenate(labels) if labels else None,
        "features": np.concatenate(features) if features else None,
        "scores": {name: np.concatenate(values) for name, values in computed.items()},
    }
