"""Corruption robustness: accuracy of any Keras classifier on corrupted test data."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from keras_gradmix.corruptions import CORRUPTIONS, SEVERITIES, check_corruption, corrupt
from keras_gradmix.osr.features import class_labels, iter_batches


def evaluate_corruptions(
    model, data, corruptions: str | Sequence[str] = CORRUPTIONS,
    severities: int | Sequence[int] = SEVERITIES, *, seed: int = 0, batch_size: int = 256,
) -> dict:
    """Accuracy on clean and corrupted copies of ``data`` (built on the fly).

    Args:
        model: any Keras classifier (arg-max of its outputs is the prediction),
            a ``GradMixModel`` included, on any backend (the corruptions are
            TensorFlow ops, the predictions NumPy in, NumPy out).
        data: labelled test images in [0, 1]: ``(x, y)`` arrays or a
            ``tf.data.Dataset`` of ``(x, y)`` batches; integer or one-hot labels.
        corruptions, severities: names in
            :data:`keras_gradmix.corruptions.CORRUPTIONS` and levels 1-5
            (one or several).
        seed: batch ``i`` is corrupted with seed ``(seed, i)``; with the same
            data order and ``batch_size``, every model sees the same images.

    Returns:
        ``{"clean": accuracy, "accuracy": {corruption: {severity: accuracy}},
        "mean": mean over every corruption and severity}``, the last being the
        mean corruption accuracy.

    Examples:

    ```python
    result = evaluate_corruptions(model, (x_test, y_test), severities=(1, 3, 5))
    print(result["clean"], result["mean"], result["accuracy"]["shot_noise"][5])
    ```
    """
    corruptions = (corruptions,) if isinstance(corruptions, str) else tuple(corruptions)
    severities = (severities,) if isinstance(severities, int) else tuple(severities)
    if not corruptions or not severities:
        raise ValueError("Pass at least one corruption and one severity.")
    for name in corruptions:
        for severity in severities:
            check_corruption(name, severity)
    batches = list(iter_batches(data, batch_size))
    if not batches or any(y is None for _, y in batches):
        raise ValueError("evaluate_corruptions needs labelled data: (x, y) or a dataset of (x, y).")
    labels = np.concatenate([class_labels(y) for _, y in batches])

    def accuracy(transform) -> float:
        predictions = [
            keras.ops.convert_to_numpy(model.predict_on_batch(transform(x, i))).argmax(axis=-1)
            for i, (x, _) in enumerate(batches)
        ]
        return float(np.mean(np.concatenate(predictions) == labels))

    results = {name: {
        severity: accuracy(lambda x, i: corrupt(x, name, severity, (seed, i)).numpy())
        for severity in severities} for name in corruptions}
    return {
        "clean": accuracy(lambda x, i: np.asarray(x, np.float32)),
        "accuracy": results,
        "mean": float(np.mean([a for r in results.values() for a in r.values()])),
    }
