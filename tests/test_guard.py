"""Nothing bad reaches the weights: a bad batch after the first applies no
update on any backend, compiled or not, and fit says which batch it was."""

import keras
import numpy as np
import pytest
from conftest import sequential_cnn, sparse_ce, to_numpy

from keras_gradmix import GradMixModel
from keras_gradmix.epochs import EpochCounter
from keras_gradmix.guard import PROBLEMS, message


def jit_choices():
    return [False, True] if keras.backend.backend() in ("tensorflow", "jax") else [False]


def trained(x, y, jit, **fit):
    model = sequential_cnn(bn=True)  # BatchNorm: statistics the forward writes
    gm = GradMixModel(model, "conv2", seed=0)
    gm.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sparse_ce(), jit_compile=jit)
    return model, gm


def state(model, gm):
    return ([to_numpy(w) for w in model.weights]
            + [to_numpy(v) for v in gm.optimizer.variables])


def bad_batch(mnist, kind):
    x, y = mnist[0][:128].copy(), mnist[1][:128].copy()
    if kind == "nan":
        x[100] = np.nan  # batch 3 of 4 (batch size 32)
    else:
        y[100] = 12  # of 10 classes
    return x, y


@pytest.mark.parametrize("jit", jit_choices())
@pytest.mark.parametrize("kind,error,match", [
    ("nan", FloatingPointError, "the inputs are not finite at epoch 1, batch 3"),
    ("label", ValueError, r"labels at epoch 1, batch 3 are not classes of the model"),
])
def test_a_bad_later_batch_applies_no_update_and_fit_names_it(mnist, kind, error, match, jit):
    """Epoch 0 on the three good batches; epoch 1 meets the bad batch 3. The
    weights, BatchNorm statistics and optimizer state must equal those of a
    run that stopped before it (epoch 1 on the good batches only)."""
    x, y = bad_batch(mnist, kind)
    good = (x[:96], y[:96])
    model, gm = trained(x, y, jit)
    reference, ref = trained(x, y, jit)
    for trainer in (gm, ref):
        trainer.fit(*good, batch_size=32, epochs=1, verbose=0, shuffle=False)
    ref.fit(*good, batch_size=32, epochs=2, initial_epoch=1, verbose=0, shuffle=False)
    with pytest.raises(error, match=match):
        gm.fit(x, y, batch_size=32, epochs=3, initial_epoch=1, verbose=0, shuffle=False)
    for a, b in zip(state(model, gm), state(reference, ref)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert int(to_numpy(gm.optimizer.iterations)) == 6
    history = gm.fit(*good, batch_size=32, epochs=1, verbose=0)  # a refit trains again
    assert np.isfinite(history.history["loss"]).all()


def test_every_batch_after_the_bad_one_is_held_too(mnist):
    x, y = bad_batch(mnist, "label")
    x, y = np.concatenate([x, x[:64]]), np.concatenate([y, mnist[1][:64]])  # good batches after it
    model, gm = trained(x, y, False)
    reference, ref = trained(x, y, False)
    gm.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, shuffle=False)
    ref.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, shuffle=False)
    ref.fit(x[:96], y[:96], batch_size=32, epochs=2, initial_epoch=1, verbose=0, shuffle=False)
    with pytest.raises(ValueError, match="batch 3"):
        gm.fit(x, y, batch_size=32, epochs=2, initial_epoch=1, verbose=0, shuffle=False)
    for a, b in zip(state(model, gm), state(reference, ref)):
        np.testing.assert_array_equal(a, b)  # batches 4 and 5 were good, and not applied


def test_train_on_batch_applies_no_update_from_a_bad_batch(mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    model, gm = trained(x, y, False)
    gm.train_on_batch(x, y)
    before = state(model, gm)
    bad = x.copy()
    bad[5] = np.inf
    with pytest.raises(FloatingPointError, match="in this train_on_batch batch"):
        gm.train_on_batch(bad, y)
    for a, b in zip(state(model, gm), before):
        np.testing.assert_array_equal(a, b)
    gm.train_on_batch(x, y)  # the record was cleared: good batches train
    assert any(not np.array_equal(a, b) for a, b in zip(state(model, gm), before))


def test_the_epoch_callback_keeps_dispatch_asynchronous():
    gm = GradMixModel(sequential_cnn(), "conv2")
    counter = EpochCounter(gm)
    assert type(counter).on_batch_end is keras.callbacks.Callback.on_batch_end
    assert counter.async_safe  # its batch hook reads the logs Keras has read already
    callbacks = keras.callbacks.CallbackList([counter], model=gm)
    # Keras dispatches callbacks from a thread where the backend is thread-safe.
    assert callbacks._async_train == (keras.backend.backend() != "tensorflow")


def test_messages_name_every_problem():
    code = 2 ** PROBLEMS.index("masked") + 2 ** PROBLEMS.index("labels")
    error, text = message([code, 4, 17])
    assert error is FloatingPointError
    assert "not finite at epoch 4, batch 17: the masked term" in text
    assert "labels at epoch 4, batch 17 are not classes" in text
    assert message([0, 0, 0]) is None
    assert message([2 ** PROBLEMS.index("labels"), 0, 0])[0] is ValueError
    error, text = message([2 ** PROBLEMS.index("inputs"), 0, 3])
    assert error is FloatingPointError
    assert "the inputs are not finite at epoch 0, batch 3" in text and "loss" not in text.split(".")[0]


# ------------------------------------------------------------ mixed precision
def half_precision_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, dtype="float32"),
    ])


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy("float32")


def applied_steps(trainer) -> int:
    return int(to_numpy(trainer.optimizer.inner_optimizer.iterations))


@pytest.mark.parametrize("pixels,scale", [(255.0, 2.0**15), (1.0, 2.0**30)])
def test_loss_scale_overflows_are_the_optimizer_s_business_as_in_plain_keras(mixed_float16, pixels, scale):
    """The first steps overflow in float16; LossScaleOptimizer skips them and
    lowers the scale. GradMix applies as many steps as plain Keras does (it
    applied none: every overflow was taken for a bad batch)."""
    rng = np.random.default_rng(0)
    x = (rng.random((640, 16, 16, 1)) * pixels).astype("float32")
    y = rng.integers(0, 10, 640)
    counts = {}
    for wrapped in (False, True):
        model = half_precision_cnn()
        trainer = GradMixModel(model, "conv2", value_range=(0, pixels), seed=0) if wrapped else model
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(), initial_scale=scale)
        trainer.compile(optimizer=optimizer, loss=sparse_ce())
        trainer.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
        counts[wrapped] = applied_steps(trainer)
        assert float(to_numpy(trainer.optimizer.dynamic_scale)) < scale  # overflows lowered it
    assert 5 <= counts[False] < 20 and abs(counts[True] - counts[False]) <= 2, counts


def test_a_nan_image_under_loss_scaling_is_still_a_bad_batch(mixed_float16):
    rng = np.random.default_rng(0)
    x = rng.random((96, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 10, 96)
    x[70] = np.nan  # batch 2
    model = half_precision_cnn()
    gm = GradMixModel(model, "conv2", seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())  # compile wraps it in a LossScaleOptimizer
    assert isinstance(gm.optimizer, keras.optimizers.LossScaleOptimizer)
    # Named from the inputs themselves: on CPUs where oneDNN fuses Conv2D+ReLU
    # in float16 the NaN becomes a finite activation and the loss stays finite.
    with pytest.raises(FloatingPointError, match="inputs are not finite at epoch 0, batch 2"):
        gm.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert all(np.isfinite(to_numpy(w)).all() for w in model.weights)


def nan_blind_cnn():
    """A CNN that reads NaN as 0, as a fused kernel may: its loss and gradients
    stay finite on a NaN image."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Lambda(lambda t: keras.ops.nan_to_num(t, nan=0.0))(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@pytest.mark.parametrize("jit", jit_choices())
def test_a_nan_image_is_a_bad_batch_even_when_the_loss_stays_finite(jit):
    """The guard checks the inputs, not only the loss: batch 1's NaN image
    stops fit and applies no update although every loss term is finite;
    with check_inputs=False (a model that reads NaN as "missing" on purpose)
    it trains."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    x[40] = np.nan  # batch 1 of 2

    def fitted(check):
        model = nan_blind_cnn()
        gm = GradMixModel(model, "conv2", seed=0, check_inputs=check)
        gm.compile(optimizer="adam", loss=sparse_ce(), jit_compile=jit)
        gm.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
        return model, gm

    model, gm = fitted(True)
    with pytest.raises(FloatingPointError, match="the inputs are not finite at epoch 0, batch 1") \
            as caught:
        gm.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert "the loss is not finite" not in str(caught.value)  # the loss alone misses it
    reference, ref = fitted(True)  # the same calls without the bad batch
    ref.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.weights + gm.optimizer.variables, reference.weights + ref.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))  # batch 0's update only
    model, gm = fitted(False)
    history = gm.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    assert int(to_numpy(gm.optimizer.iterations)) == 3


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_bad_batch_stops_fit_at_once_and_its_flag_stays_inside(mnist, verbose, capsys):
    """41 batches, batch 3 bad: fit stops right after it (on JAX and PyTorch,
    where Keras reads the logs in its callback thread, at the latest at the
    check_every read), not at the epoch's end (37 of 41 steps wasted before);
    no callback, progress bar or History sees the step's flag."""
    x, y = mnist[0][:41 * 8].copy(), mnist[1][:41 * 8].copy()
    y[3 * 8 + 1] = 12
    seen = []
    spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(set(logs)))
    model = sequential_cnn()
    gm = GradMixModel(model, "conv2", seed=0, check_every=5)
    gm.compile(optimizer="adam", loss=sparse_ce())
    history = gm.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=verbose, callbacks=[spy])
    with pytest.raises(ValueError, match="epoch 0, batch 3"):
        gm.fit(x, y, batch_size=8, epochs=1, verbose=verbose, shuffle=False, callbacks=[spy])
    steps_run = int(to_numpy(gm.guard_variables[1]))
    # TensorFlow: at once; else at the latest the read before step 5.
    assert 4 <= steps_run <= (4 if keras.backend.backend() == "tensorflow" else 5), steps_run
    assert int(to_numpy(gm.optimizer.iterations)) == 2 + 3
    assert seen and all("gradmix_held" not in keys and "loss" in keys for keys in seen)
    assert "gradmix_held" not in history.history and "gradmix_held" not in capsys.readouterr().out
    assert "gradmix_held" not in gm.train_on_batch(x[:8], y[:8], return_dict=True)


def test_a_bad_batch_ends_an_endless_epoch():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 64)
    y[40] = 12
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    gm = GradMixModel(sequential_cnn(), "conv2", seed=0, check_inputs=False, check_every=4)
    gm.compile(optimizer="adam", loss=sparse_ce())
    with pytest.raises(ValueError, match="epoch 0, batch 5"):
        gm.fit(data, steps_per_epoch=10_000, epochs=1, verbose=0)
    steps_run = int(to_numpy(gm.guard_variables[1]))
    assert 6 <= steps_run <= 6 + 4, steps_run  # the read at step 8 at the latest
