"""What ``fit`` adds to the step: the epoch, fed to the compiled step without
retracing (warm-up, schedules), and, once per epoch, the verdict of the
step's guard (:mod:`keras_gradmix.guard`): a clear error naming the bad batch.
No batch-level hook: Keras keeps its asynchronous dispatch."""

from __future__ import annotations

import keras
import numpy as np

from keras_gradmix import guard


def raise_if_bad(gm) -> None:
    """Raises the guard's error if a batch was bad (and clears the record);
    reads one small variable on the host."""
    record, _ = gm.guard_variables
    found = guard.message(np.asarray(keras.ops.convert_to_numpy(record)))
    if found:
        record.assign([0, 0, 0])
        error, text = found
        raise error(text)


class EpochCounter(keras.callbacks.Callback):
    """Feeds the epoch to the compiled step (warm-up, schedules) without
    retracing, and at the end of each epoch stops training with a clear error
    when the step's guard found a bad batch."""

    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def on_train_begin(self, logs=None):
        record, _ = self.gm.guard_variables
        record.assign([0, 0, 0])

    def on_epoch_begin(self, epoch, logs=None):
        self.gm.epoch.assign(epoch)
        self.gm.guard_variables[1].assign(0)

    def on_epoch_end(self, epoch, logs=None):
        raise_if_bad(self.gm)
