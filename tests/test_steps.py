"""The train step on every backend: against an independent implementation,
exactly plain training where GradMix is off, and under XLA / mixed precision."""

import importlib.util

import keras
import numpy as np
import pytest
from conftest import (
    MODEL_FACTORIES,
    mnist_cnn,
    sequential_cnn,
    sparse_ce,
    tf_only,
    to_numpy,
    xla_only,
)
from reference import expected_step

from keras_gradmix import GradMixModel

# Deterministic masks: a fixed area and a constant fill.
FIXED = dict(mask_area=(0.25, 0.25), fill=0.5, attribution="gradcam")  # as tests/reference.py

def sgd_gradmix(model, layer="conv2", jit=False, **options):
    gm = GradMixModel(model, layer=layer, seed=0, **options)
    gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce(), jit_compile=jit)
    return gm

def assert_sgd_update(before, after, gradients, lr=0.1):
    for w0, w1, g in zip(before, after, gradients):
        np.testing.assert_allclose(w1, w0 - lr * g, rtol=1e-4, atol=1e-6)


# The independent implementation (tests/reference.py) is TensorFlow code; the
# other backends are checked against the TensorFlow step in test_cross_backend.

reference_tf = tf_only("tests/reference.py differentiates with TensorFlow")

@reference_tf

@pytest.mark.parametrize("mode", ["paired", "replace"])

def test_step_matches_independent_implementation(mnist, mode):
    x, y = mnist[0][:16], mnist[1][:16]
    model = sequential_cnn()
    before = [w.numpy() for w in model.trainable_weights]
    loss, grads, mask = expected_step(model, "conv2", x, y, 0.25, 0.5, mode)
    assert mask.any()
    gm = sgd_gradmix(model, mode=mode, **FIXED)
    logs = gm.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    # The update is the gradient of the GradMix loss alone: no attribution
    # gradient leaks into the parameters.
    assert_sgd_update(before, [w.numpy() for w in model.trainable_weights], grads)

@reference_tf

def test_sample_weights_enter_both_terms(mnist):
    x, y = mnist[0][:8], mnist[1][:8]
    sw = np.array([1, 0, 2, 1, 0, 1, 1, 3], "float32")
    model = sequential_cnn()
    loss, _, _ = expected_step(model, "conv2", x, y, 0.25, 0.5, "paired", sw)
    logs = sgd_gradmix(model, **FIXED).train_on_batch(x, y, sample_weight=sw, return_dict=True)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)

def test_metrics_use_clean_predictions(mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    model = sequential_cnn()
    clean_acc = np.mean(np.argmax(to_numpy(model(x, training=True)), axis=1) == y)
    gm = GradMixModel(model, "conv2", mode="replace", fill=0.0, mask_area=(0.49, 0.49))
    gm.compile(optimizer="sgd", loss=sparse_ce(), metrics=["accuracy"])
    logs = gm.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["accuracy"], clean_acc)

@pytest.mark.parametrize("kind", ["functional", "nested", "subclassed"])

def test_every_model_kind_trains_like_the_sequential_reference(mnist, kind):
    x, y = mnist[0][:16], mnist[1][:16]
    reference = sequential_cnn()
    factory, layer = MODEL_FACTORIES[kind]
    model = factory()
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)  # same architecture, same initial weights
    expected = sgd_gradmix(reference, **FIXED).train_on_batch(x, y, return_dict=True)
    logs = sgd_gradmix(model, layer=layer, **FIXED).train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected["loss"], rtol=1e-5)
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

def test_batchnorm_statistics_come_from_the_clean_batch_only(mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    results = {}
    for bn_statistics in ("clean", "all"):
        model = sequential_cnn(bn=True)
        gm = GradMixModel(model, "conv2", bn_statistics=bn_statistics, seed=0)
        gm.compile(optimizer="sgd", loss=sparse_ce())
        gm.train_on_batch(x, y)
        results[bn_statistics] = model
    clean_only = sequential_cnn(bn=True)  # same seed: same initial weights
    clean_only(x, training=True)  # one training-mode forward of the clean batch
    for name in ("bn1", "bn2"):
        ref = clean_only.get_layer(name)
        got = results["clean"].get_layer(name)
        np.testing.assert_allclose(got.moving_mean.numpy(), ref.moving_mean.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.moving_variance.numpy(), ref.moving_variance.numpy(), rtol=1e-5)
    # The reference-code behaviour updates them again from the masked batch.
    all_mean = results["all"].get_layer("bn1").moving_mean.numpy()
    assert not np.allclose(all_mean, clean_only.get_layer("bn1").moving_mean.numpy(), rtol=1e-3)

def test_seed_makes_masks_reproducible(batch):
    def weights_after(seed):
        model = sequential_cnn()
        gm = GradMixModel(model, "conv2", seed=seed)  # noise fill, random area
        gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
        gm.fit(*batch, batch_size=4, epochs=2, verbose=0, shuffle=False)
        return model.get_weights()

    first, again, other = weights_after(7), weights_after(7), weights_after(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.allclose(a, b) for a, b in zip(first, other))

@xla_only

def test_xla_step_compiles_and_matches_the_plain_step(mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    plain, xla = sequential_cnn(), sequential_cnn()
    a = sgd_gradmix(plain, **FIXED).fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    b = sgd_gradmix(xla, jit=True, **FIXED).fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-4)
    for w0, w1 in zip(plain.get_weights(), xla.get_weights()):
        np.testing.assert_allclose(w0, w1, rtol=1e-3, atol=1e-5)

@xla_only

@pytest.mark.parametrize(
    "options",
    [dict(), dict(fill="mix", mode="replace"), dict(alpha=2.0, beta=0.5, target="loss", normalize="batch")],
)

def test_xla_compiles_random_options(batch, options):
    gm = GradMixModel(sequential_cnn(bn=True), "conv2", seed=0, **options)
    gm.compile(optimizer="adam", loss=sparse_ce(), jit_compile=True)
    history = gm.fit(*batch, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()

@pytest.mark.parametrize("shape", [(20, 36, 1), (16, 16, 3)])

def test_grayscale_rgb_nonsquare_batch_of_one_and_short_last_batch(shape):
    rng = np.random.default_rng(0)
    x = rng.random((10,) + shape).astype("float32")
    y = rng.integers(0, 10, 10)
    gm = GradMixModel(sequential_cnn(input_shape=shape), "conv2", seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    for batch_size in (4, 1):  # 4, 4, 2 and ten batches of one
        history = gm.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()

def test_one_hot_labels_and_tf_data(batch):
    import tensorflow as tf

    x, y = batch
    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(10, dtype="float32")[y])).batch(4)
    gm = GradMixModel(sequential_cnn(), "conv2", fill="mix", seed=0)
    gm.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
               metrics=["accuracy"])
    history = gm.fit(ds, epochs=1, validation_data=ds, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and "val_accuracy" in history.history

def test_numpy_tf_data_and_pydataset_inputs_train_the_same(mnist):
    import tensorflow as tf  # tf.data works on every backend where TensorFlow is installed

    x, y = mnist[0][:16], mnist[1][:16]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8]

    inputs = {
        "numpy": dict(x=x, y=y, batch_size=8, shuffle=False),
        "tf.data": dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(8)),
        "PyDataset": dict(x=Batches(), shuffle=False),
    }
    weights = {}
    for name, data in inputs.items():
        model = sequential_cnn()
        gm = GradMixModel(model, "conv2", seed=0)
        gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
        gm.fit(epochs=1, verbose=0, **data)
        weights[name] = model.get_weights()
    assert not np.allclose(weights["numpy"][0], sequential_cnn().get_weights()[0])
    for name in ("tf.data", "PyDataset"):
        for a, b in zip(weights["numpy"], weights[name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

def test_grain_datasets_train_like_numpy_and_get_the_first_batch_look(mnist):
    """Keras fit takes Grain datasets (keras PR #21494); GradMix reads their
    first batch like any other input, so bad pixels are named before training."""
    grain = pytest.importorskip("grain")
    if importlib.util.find_spec("keras.src.trainers.data_adapters.grain_dataset_adapter") is None:
        pytest.skip(f"Keras {keras.__version__}'s fit does not take Grain datasets")
    x, y = mnist[0][:16], mnist[1][:16]

    def dataset(images):
        return grain.MapDataset.source(list(range(16))).map(lambda i: (images[i], y[i])).batch(8)

    weights = {}
    for name, data in {"numpy": dict(x=x, y=y, batch_size=8, shuffle=False),
                       "grain": dict(x=dataset(x))}.items():
        model = sequential_cnn()
        gm = GradMixModel(model, "conv2", seed=0)
        gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
        gm.fit(epochs=1, verbose=0, **data)
        weights[name] = model.get_weights()
    for a, b in zip(weights["numpy"], weights["grain"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model = sequential_cnn()
    before = model.get_weights()
    gm = GradMixModel(model, "conv2", seed=0)
    gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    with pytest.raises(ValueError, match=r"pixels span \[0, 255\]"):
        gm.fit(dataset(x * 255.0), epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def fit_weights(model_fn, wrap, epochs, x, y, **fit_kwargs):
    model = model_fn()
    trainer = GradMixModel(model, "conv2", seed=0, **wrap) if wrap is not None else model
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    trainer.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, **fit_kwargs)
    return model.get_weights(), trainer

@pytest.mark.parametrize("mode", ["paired", "replace"])

def test_probability_zero_is_exactly_plain_training(mnist, mode):
    x, y = mnist[0][:64], mnist[1][:64]
    plain, _ = fit_weights(sequential_cnn, None, 2, x, y)
    gradmix, _ = fit_weights(sequential_cnn, dict(mode=mode, probability=0.0), 2, x, y)
    for a, b in zip(plain, gradmix):
        np.testing.assert_array_equal(a, b)

def test_warmup_epochs_train_plainly_then_mask_without_retracing(mnist, monkeypatch):
    x, y = mnist[0][:64], mnist[1][:64]
    traces = []
    original = GradMixModel.masked_batch
    monkeypatch.setattr(
        GradMixModel, "masked_batch",
        lambda self, *a, **k: traces.append(1) or original(self, *a, **k),
    )
    plain, _ = fit_weights(sequential_cnn, None, 2, x, y)
    warm, gm = fit_weights(sequential_cnn, dict(warmup_epochs=2), 2, x, y)
    for a, b in zip(plain, warm):
        np.testing.assert_array_equal(a, b)  # epochs 0 and 1: no masking
    if keras.backend.backend() != "torch":  # torch runs eagerly: no tracing
        assert len(traces) == 1  # the step was traced once, the epoch is a variable
    plain3, _ = fit_weights(sequential_cnn, None, 3, x, y)
    gm.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, shuffle=False, verbose=0)
    assert int(gm.epoch.numpy()) == 2
    assert not all(np.allclose(a, b) for a, b in zip(plain3, gm.model.get_weights()))

@pytest.fixture

def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")

@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)

def test_mixed_precision_step_is_finite_and_honours_loss_scaling(mnist, policy):
    x, y = mnist[0][:32], mnist[1][:32]

    def update(options):
        model = mnist_cnn()
        before = [w.numpy().astype("float32") for w in model.trainable_weights]
        gm = GradMixModel(model, ["conv1", "conv2"], seed=0, **options)
        gm.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
        logs = gm.train_on_batch(x, y, return_dict=True)
        after = [w.numpy().astype("float32") for w in model.trainable_weights]
        return logs["loss"], gm, np.concatenate([(b - a).ravel() for a, b in zip(before, after)])

    loss, gm, delta = update(dict(attribution="layercam", fill="mix"))
    assert gm.model.compute_dtype == policy.split("_")[1]
    if policy == "mixed_float16":
        assert isinstance(gm.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(loss) and np.isfinite(delta).all() and np.abs(delta).max() > 0
    keras.mixed_precision.set_global_policy("float32")
    _, _, delta32 = update(dict(attribution="layercam", fill="mix"))
    # Without loss scaling honoured the float16 update would be 2**15 times smaller.
    ratio = np.linalg.norm(delta) / np.linalg.norm(delta32)
    assert 0.5 < ratio < 2.0, ratio

@pytest.mark.parametrize(
    "options",
    [
        dict(layer=["conv1", "conv2"], attribution="gradcam++", mask="threshold", area_sampling="sample"),
        dict(fill="mix", label_mode="attribution", probability=0.5, warmup_epochs=1),
    ],
)

@xla_only

def test_xla_compiles_the_options(batch, options):
    options = dict(layer="conv2") | options
    gm = GradMixModel(sequential_cnn(bn=True), seed=0, **options)
    gm.compile(optimizer="adam", loss=sparse_ce(), jit_compile=True)
    history = gm.fit(*batch, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


class Penalty(keras.layers.Layer):
    """Adds ``0.1 * mean(x^2)`` with ``add_loss`` (a loss only the forward knows)."""

    def call(self, x):
        self.add_loss(0.1 * keras.ops.mean(keras.ops.square(x)))
        return x


def regularised_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1",
                            kernel_regularizer=keras.regularizers.L2(0.01)),
        keras.layers.MaxPooling2D(),
        Penalty(name="penalty"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activity_regularizer=keras.regularizers.L2(10.0)),
    ])


@pytest.mark.parametrize(
    "options", [dict(probability=0.0), dict(probability=0.0, mode="replace"), dict(warmup_epochs=5)]
)
def test_regularisation_losses_enter_exactly_as_in_plain_keras(mnist, options):
    """Activity regularisers, kernel regularisers and add_loss, on every backend."""
    x, y = mnist[0][:32], mnist[1][:32]
    runs = {}
    for name in ("plain", "gradmix"):
        model = regularised_cnn()
        trainer = model if name == "plain" else GradMixModel(model, "conv2", seed=0, **options)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
        history = trainer.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        runs[name] = history.history["loss"], model.get_weights()
    (plain_loss, plain_weights), (loss, weights) = runs["plain"], runs["gradmix"]
    assert loss == plain_loss
    for a, b in zip(plain_weights, weights):
        np.testing.assert_array_equal(a, b)
    # The regularisers are not negligible here: all three add to the loss.
    model = regularised_cnn()
    model(x[:16])
    assert len(model.losses) == 3 and min(float(to_numpy(v)) for v in model.losses) > 1e-4
