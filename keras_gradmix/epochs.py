"""What ``fit`` adds to the step: the epoch, fed to the compiled step without
retracing (warm-up, schedules), and the verdict of the step's guard
(:mod:`keras_gradmix.guard`): a clear error naming the bad batch, at most a few
steps after it. Each step's logs carry whether it was held
(``guard.HELD``), which Keras reads on the host anyway; the batch hook takes
that flag out (so no other callback, progress bar or ``History`` sees it), and
is ``async_safe``: where Keras dispatches callbacks from a thread (JAX,
PyTorch) it stays asynchronous."""

from __future__ import annotations

import keras
import numpy as np

from keras_gradmix import guard


def raise_if_bad(gm, call: str = "fit") -> None:
    """Raises the guard's error if a batch was bad (and clears the record);
    reads one small variable on the host. ``call``: ``"fit"`` or
    ``"train_on_batch"``, for the message."""
    record, _ = gm.guard_variables
    found = guard.message(np.asarray(keras.ops.convert_to_numpy(record)), call)
    if found:
        record.assign([0, 0, 0])
        error, text = found
        raise error(text)


class EpochCounter(keras.callbacks.Callback):
    """Feeds the epoch to the compiled step (warm-up, schedules) without
    retracing, and at the end of each epoch stops training with a clear error
    when the step's guard found a bad batch."""

    async_safe = True  # its batch-end hook reads only the logs Keras has read already

    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def on_train_begin(self, logs=None):
        record, _ = self.gm.guard_variables
        record.assign([0, 0, 0])

    def on_epoch_begin(self, epoch, logs=None):
        self.gm.epoch.assign(epoch)
        self.gm.guard_variables[1].assign(0)

    def on_train_batch_begin(self, batch, logs=None):
        # The bound, where the flag below waits in Keras' callback thread: a
        # host read of the record every check_every steps (on JAX after
        # Keras' own state sync, as its callbacks that read weights do).
        every = self.gm.options.check_every
        if every and batch and batch % every == 0 and not self.gm.stop_training:
            if keras.backend.backend() == "jax":
                self.gm.jax_state_sync()
            record, _ = self.gm.guard_variables
            if np.asarray(keras.ops.convert_to_numpy(record))[0]:
                self.gm.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        # A held step (a bad batch, or any step after one) ends the epoch;
        # on_epoch_end raises the error naming the batch. First in the list,
        # so the flag is gone before the other callbacks see the logs.
        if logs is not None and logs.pop(guard.HELD, 0):
            self.gm.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # the last step's logs, when Keras reports them
            logs.pop(guard.HELD, None)
        raise_if_bad(self.gm)
