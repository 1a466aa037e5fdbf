"""What ``fit`` adds to the step: the epoch, fed to the compiled step without
retracing (warm-up, schedules), and a clear error naming the loss term that
went non-finite (the step reports a bit per term under ``NONFINITE``)."""

from __future__ import annotations

import keras
from keras import ops

from keras_gradmix.objectives import TERMS

NONFINITE = "gradmix_nonfinite"  # the step's per-batch log the callback below reads


def nonfinite_code(terms: dict):
    """An int32 scalar: bit ``i`` set when term ``TERMS[i]`` is not finite
    (read by :class:`EpochCounter`, which names the term)."""
    names = [name for name in TERMS if name in terms]
    values = ops.stack([ops.cast(ops.reshape(terms[n], ()), "float32") for n in names])
    bits = ops.convert_to_tensor([2 ** TERMS.index(n) for n in names], "int32")
    return ops.sum(ops.where(ops.isfinite(values), 0, bits))


class EpochCounter(keras.callbacks.Callback):
    """Feeds the epoch to the compiled step (warm-up, schedules) without
    retracing, and stops training with a clear error when a term of the loss
    is not finite (and keeps that diagnostic out of the logs)."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.variable.assign(epoch)

    def on_train_batch_end(self, batch, logs=None):
        code = int((logs or {}).pop(NONFINITE, 0))
        if code:
            names = [name for bit, name in enumerate(TERMS) if code & 2**bit]
            raise FloatingPointError(
                f"GradMix: the loss is not finite at epoch {self.epoch}, batch {batch}: the "
                f"{' and '.join(names)} term{'s' if len(names) > 1 else ''} "
                f"({', '.join(repr(n) for n in names)} in keras_gradmix.objectives.TERMS). "
                f"Usual causes: a learning rate too high, float16 overflow, inputs or labels "
                f"out of range. The weights of this batch were applied.")

    def on_epoch_end(self, epoch, logs=None):
        (logs or {}).pop(NONFINITE, None)
