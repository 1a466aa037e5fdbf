"""GradMixModel, the wrapper: layers, models of every kind, inference, saving."""

import logging
import zipfile

import keras
import numpy as np
import pytest
from conftest import MODEL_FACTORIES, mnist_cnn, sequential_cnn, sparse_ce, to_numpy

from keras_gradmix import GradMixModel

@pytest.mark.parametrize("kind,picked", [("sequential", "conv2"), ("nested", "backbone"), ("subclassed", "conv2")])
def test_layer_none_picks_the_last_4d_layer_and_logs_it(batch, kind, picked, caplog):
    gm = GradMixModel(MODEL_FACTORIES[kind][0](), seed=0)
    gm.compile(optimizer="sgd", loss=sparse_ce())
    with caplog.at_level(logging.INFO, logger="keras_gradmix"):
        gm.train_on_batch(*batch)
    assert gm.layer == picked
    assert [r.getMessage() for r in caplog.records if r.name == "keras_gradmix"] == [
        f"GradMix attributes the output of layer {picked!r} (layer=None)."
    ]


def test_the_package_attaches_no_log_handler():
    handlers = logging.getLogger("keras_gradmix").handlers
    assert all(isinstance(h, logging.NullHandler) for h in handlers)


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


@pytest.mark.parametrize("layer", ["conv2", None])
@pytest.mark.parametrize("kind", ["subclassed", "sequential"])
def test_unbuilt_models_train(batch, kind, layer):
    """A model never called (Keras builds it by tracing ``call``, which must
    not count as calls of the attributed layer)."""
    from conftest import SubclassedCNN, cnn_layers

    keras.utils.set_random_seed(0)
    model = SubclassedCNN() if kind == "subclassed" else keras.Sequential(cnn_layers())
    assert not model.built
    gm = GradMixModel(model, layer, seed=0, attribution="layercam")
    gm.compile(optimizer="adam", loss=sparse_ce())
    history = gm.fit(*batch, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and gm.layer == "conv2"
    assert to_numpy(gm.preview(*batch).applied).all()


def test_preview_leaves_layer_none_unresolved(batch):
    gm = GradMixModel(sequential_cnn(), seed=0)
    out = gm.preview(*batch)
    assert gm.layer is None and tuple(out.maps.shape) == (8, 28, 28)


def test_config_keeps_the_dtype_policy():
    gm = GradMixModel(sequential_cnn(), "conv2", dtype="mixed_bfloat16", name="wrapper")
    config = gm.get_config()
    assert config["name"] == "wrapper" and config["trainable"] is True
    clone = GradMixModel.from_config(config)
    assert clone.dtype_policy.name == "mixed_bfloat16" and clone.name == "wrapper"
