"""Deploying what GradMix trained: export, plain weights, on every backend."""

import keras
import numpy as np
import pytest
from conftest import sequential_cnn, sparse_ce

from keras_gradmix import GradMixModel


def trained(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 1), dtype="float32")
    y = rng.integers(0, 10, 32)
    gm = GradMixModel(sequential_cnn(), layer="conv2", seed=0)
    gm.compile(optimizer="adam", loss=sparse_ce())
    gm.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(str(tmp_path / "gm.weights.h5"), save_weights_only=True)])
    return gm, x


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras 3.15's export fails under torch 2.13 for a plain model too")
def test_export_serves_the_plain_model(tmp_path):
    import tensorflow as tf

    gm, x = trained(tmp_path)
    gm.export(str(tmp_path / "served"))
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(np.asarray(served.serve(x)), gm.model.predict(x, verbose=0), atol=1e-5)


def test_a_wrapper_checkpoint_loads_into_the_plain_model_in_one_call(tmp_path):
    import keras_gradmix

    gm, x = trained(tmp_path)
    plain = sequential_cnn(seed=1)
    with pytest.raises(ValueError, match="expected 0 variables, but received 2"):
        plain.load_weights(str(tmp_path / "gm.weights.h5"))  # Keras alone: the wrapper's layout
    assert keras_gradmix.load_wrapped_weights(plain, str(tmp_path / "gm.weights.h5")) is plain
    np.testing.assert_allclose(plain.predict(x, verbose=0), gm.predict(x, verbose=0), atol=1e-6)
    for a, b in zip(plain.weights, gm.model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    plain.save_weights(str(tmp_path / "plain.weights.h5"))  # and a plain model's own file
    again = sequential_cnn(seed=2)
    again.load_weights(str(tmp_path / "plain.weights.h5"))
    np.testing.assert_allclose(again.predict(x, verbose=0), gm.predict(x, verbose=0), atol=1e-6)


def test_a_wrapper_checkpoint_gives_a_plain_weights_file(tmp_path):
    gm, x = trained(tmp_path)
    restored = GradMixModel(sequential_cnn(), layer="conv2")
    restored.load_weights(str(tmp_path / "gm.weights.h5"))
    restored.model.save_weights(str(tmp_path / "plain.weights.h5"))
    plain = sequential_cnn()
    plain.load_weights(str(tmp_path / "plain.weights.h5"))
    np.testing.assert_allclose(plain.predict(x, verbose=0), gm.predict(x, verbose=0), atol=1e-6)
