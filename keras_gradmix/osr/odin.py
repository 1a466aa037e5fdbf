"""ODIN: temperature scaling and a small input step toward the prediction.

Liang, Li, Srikant 2018 as OpenOOD's ``odin`` postprocessor: with ``y^`` the
predicted class and ``T`` the temperature, each image moves by ``noise`` in
the direction that raises its softmax score,
``x~ = x - noise * sign(grad_x CE(z(x) / T, y^))`` (a zero gradient counts as
positive, as ``torch.ge``), and the score is ``max_c softmax(z(x~) / T)``.
The step is in the model's input units (OpenOOD divides it by the
normalisation's std because its inputs are standardised; here the model
takes what the data holds). Needs one forward and backward more per batch.

References:
    - Liang, Li, Srikant. "Enhancing The Reliability of Out-of-distribution
      Image Detection in Neural Networks". ICLR 2018.
"""

from __future__ import annotations

import keras
import numpy as np
from scipy.special import softmax

from keras_gradmix.steps import backend_step


def odin(model, x, temperature: float = 1000.0, noise: float = 0.0014) -> np.ndarray:
    """ODIN scores of a batch ``x`` (higher = more likely known); ``model``
    returns logits. OpenOOD's defaults: ``T = 1000``, ``noise = 0.0014``."""
    if not temperature > 0:
        raise ValueError(f"odin's temperature must be > 0, got {temperature!r}.")
    if not noise >= 0:
        raise ValueError(f"odin's noise must be >= 0, got {noise!r}.")

    def loss(inputs):
        logits = model(inputs, training=False)
        predicted = keras.ops.stop_gradient(keras.ops.argmax(logits, axis=-1))
        return keras.ops.sum(keras.losses.sparse_categorical_crossentropy(
            predicted, logits / temperature, from_logits=True))

    x = np.asarray(keras.ops.convert_to_numpy(x), np.float32)
    gradient = keras.ops.convert_to_numpy(backend_step().input_gradient(loss, x))
    moved = x - noise * np.where(gradient >= 0, 1.0, -1.0).astype(np.float32)
    logits = np.asarray(keras.ops.convert_to_numpy(model(moved, training=False)), np.float64)
    return softmax(logits / temperature, axis=1).max(axis=1)
