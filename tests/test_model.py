"""GradMixModel's train step against an independent implementation, and its contract."""

import logging
import zipfile

import keras
import numpy as np
import pytest
from conftest import MODEL_FACTORIES, mnist_cnn, sequential_cnn, sparse_ce, tf_only, to_numpy, xla_only
from reference import expected_step

from keras_gradmix import GradMixModel
from keras_gradmix.model import MaskedBatch

# Deterministic masks: a fixed area and a constant fill.
FIXED = dict(mask_area=(0.25, 0.25), fill=0.5)


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


def test_mix_loss_mixes_labels_by_area():
    gm = GradMixModel(sequential_cnn(), "conv2", fill="mix", mode="replace")
    gm.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    y = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    kept = np.array([0.9, 0.5, 0.75, 0.6], "float32")
    partner = np.array([1, 0, 3, 2])
    masked = MaskedBatch(None, None, None, kept, 1 - kept, partner, None)
    loss = gm.gradmix_loss(None, y, None, None, logits, None, masked)
    labels = np.argmax(y, axis=1)
    from reference import cross_entropy

    expected = np.mean(
        kept * cross_entropy(logits, labels) + (1 - kept) * cross_entropy(logits, labels[partner])
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


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


@pytest.mark.parametrize("kind,picked", [("sequential", "conv2"), ("nested", "backbone"), ("subclassed", "conv2")])
def test_layer_none_picks_the_last_4d_layer_and_logs_it(batch, kind, picked):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("keras_gradmix")
    logger.addHandler(handler)
    try:
        gm = GradMixModel(MODEL_FACTORIES[kind][0](), seed=0)
        gm.compile(optimizer="sgd", loss=sparse_ce())
        gm.train_on_batch(*batch)
    finally:
        logger.removeHandler(handler)
    assert gm.layer == picked
    assert [r.getMessage() for r in records] == [
        f"GradMix attributes the output of layer {picked!r} (layer=None)."
    ]


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


def test_inference_is_the_wrapped_model(batch):
    x, y = batch
    model = sequential_cnn(bn=True)
    gm = GradMixModel(model, "conv2")
    gm.compile(optimizer="sgd", loss=sparse_ce(), metrics=["accuracy"])
    model.compile(optimizer="sgd", loss=sparse_ce(), metrics=["accuracy"])
    np.testing.assert_array_equal(gm.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(to_numpy(gm(x)), to_numpy(model(x)))
    assert gm.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_save_and_load_round_trip(tmp_path, batch):
    x, y = batch
    gm = GradMixModel(sequential_cnn(bn=True), "conv2", mode="replace", fill="mix",
                      mask_area=(0.2, 0.3), alpha=2.0, seed=3)
    gm.compile(optimizer="adam", loss=sparse_ce(), metrics=["accuracy"])
    gm.fit(x, y, batch_size=4, epochs=1, verbose=0)
    gm.save(tmp_path / "gradmix.keras")
    loaded = keras.saving.load_model(tmp_path / "gradmix.keras")  # safe_mode=True
    assert isinstance(loaded, GradMixModel)
    config, loaded_config = gm.get_config(), loaded.get_config()
    config.pop("model"), loaded_config.pop("model")
    assert loaded_config == config
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), gm.predict(x, verbose=0))
    assert np.isfinite(loaded.fit(x, y, epochs=1, verbose=0).history["loss"]).all()

    gm.model.save(tmp_path / "plain.keras")  # usable without keras_gradmix
    with zipfile.ZipFile(tmp_path / "plain.keras") as archive:
        assert "keras_gradmix" not in archive.read("config.json").decode()
    plain = keras.saving.load_model(tmp_path / "plain.keras")
    np.testing.assert_array_equal(plain.predict(x, verbose=0), gm.predict(x, verbose=0))


def test_short_real_training_run_loss_falls(mnist):
    x, y = mnist  # 4,000 real digits to train on, 1,000 held out
    gm = GradMixModel(mnist_cnn(), "conv2", seed=0)
    gm.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sparse_ce(), metrics=["accuracy"])
    before = gm.evaluate(x[4000:], y[4000:], verbose=0, return_dict=True)
    history = gm.fit(x[:4000], y[:4000], batch_size=32, epochs=3, verbose=0)
    after = gm.evaluate(x[4000:], y[4000:], verbose=0, return_dict=True)
    losses = history.history["loss"]
    assert losses[0] > losses[1] > losses[2]
    assert after["loss"] < 0.25 * before["loss"]
    assert after["accuracy"] > 0.85, after


def test_keras_applications_backbone_used_as_a_layer():
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, minimalistic=True,
        include_preprocessing=False,
    )
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5)(pooled))
    path = "MobileNetV3Small/expanded_conv_2_add"
    gm = GradMixModel(model, path, seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 32, 32, 3)).astype("float32"), np.arange(4) % 5
    assert np.isfinite(gm.fit(x, y, epochs=1, verbose=0).history["loss"]).all()
    with gm.tap() as tap:
        gm(x)
    (activation,) = tap.outputs[path]
    assert tuple(activation.shape) == (4, 4, 4, 24)
