"""Interrupted training resumes exactly: BackupAndRestore and initial_epoch.

What is restored: every weight of the wrapped model, the optimizer's state, and
GradMix's own state, the seed generator (so the masks drawn after resuming are
the ones an uninterrupted run draws) and the epoch counter (warmup_epochs). What
is not: Keras' global RNG (dropout without a seed, NumPy-array shuffling) and
your data pipeline's position; use seeded layers and a fixed data order.
"""

import keras
import numpy as np
import pytest
from conftest import cnn_layers, sequential_cnn, sparse_ce

from keras_gradmix import GradMixModel

EPOCHS, STOP_AFTER = 4, 2


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == STOP_AFTER - 1:
            raise RuntimeError("interrupted")


def trainer(built=True):
    keras.utils.set_random_seed(0)
    model = sequential_cnn(bn=True) if built else keras.Sequential(cnn_layers(bn=True))
    gm = GradMixModel(model, "conv2", seed=5, warmup_epochs=1, probability=0.7,
                      area_sampling="sample", attribution="layercam")
    gm.compile(optimizer=keras.optimizers.Adam(1e-2), loss=sparse_ce())
    return gm


def assert_same(a, b):
    exact = keras.backend.backend() == "tensorflow"  # deterministic on this CPU
    for u, v in zip(a, b):
        if exact:
            np.testing.assert_array_equal(u, v)
        else:
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("built", [True, False])
def test_backup_and_restore_resumes_like_an_uninterrupted_run(mnist, tmp_path, built):
    x, y = mnist[0][:64], mnist[1][:64]
    fit = dict(batch_size=16, epochs=EPOCHS, shuffle=False, verbose=0)
    straight = trainer(built)
    straight.fit(x, y, **fit)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = trainer(built)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(x, y, callbacks=[backup, Interrupt()], **fit)
    resumed = trainer(built)  # a new process: fresh objects, same initial weights
    history = resumed.fit(x, y, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))], **fit)
    assert len(history.history["loss"]) == EPOCHS - STOP_AFTER
    assert int(keras.ops.convert_to_numpy(resumed.epoch)) == EPOCHS - 1
    assert_same(straight.get_weights(), resumed.get_weights())  # incl. the seed generator state


def test_initial_epoch_continues_the_warm_up_and_the_draws(mnist):
    x, y = mnist[0][:64], mnist[1][:64]
    fit = dict(batch_size=16, shuffle=False, verbose=0)
    straight = trainer()
    straight.fit(x, y, epochs=EPOCHS, **fit)
    split = trainer()
    split.fit(x, y, epochs=1, **fit)  # the warm-up epoch only
    split.fit(x, y, epochs=EPOCHS, initial_epoch=1, **fit)
    assert_same(straight.get_weights(), split.get_weights())


@pytest.mark.parametrize("entry", ["fit", "train_on_batch"])
def test_fit_runs_again_after_an_exception_in_the_step(mnist, entry):
    """On TensorFlow a failed trace left a tf.function that could not create
    the optimizer's variables on the next call; every backend trains again."""
    x, y = mnist[0][:16], mnist[1][:16]
    armed = [True]

    def loss(labels, logits):
        if armed[0]:
            raise RuntimeError("a loss that fails once")
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    gm = GradMixModel(sequential_cnn(), "conv2", seed=0)
    gm.compile(optimizer="adam", loss=loss)
    run = (lambda: gm.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][0]) \
        if entry == "fit" else (lambda: gm.train_on_batch(x, y, return_dict=True)["loss"])
    with pytest.raises(RuntimeError, match="fails once"):
        run()
    armed[0] = False
    before = [w.copy() for w in gm.model.get_weights()]
    assert np.isfinite(run())
    assert any(not np.array_equal(a, b) for a, b in zip(before, gm.model.get_weights()))
