"""Keras' private API is reached through keras_gradmix.compat only, and the
supported Keras range is declared once."""

import re
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import MODEL_FACTORIES, sparse_ce, tf_only

from keras_gradmix import GradMixModel, compat

PACKAGE = Path(__file__).resolve().parents[1] / "keras_gradmix"
PRIVATE = re.compile(
    r"keras\.src|\._compile_loss|_loss_tracker|_update_metrics_variables|_flatten_layers"
    r"|_losses_override|\._compute_loss\b|_keras_history|_outbound_nodes|_symbolic_build"
)


def test_private_keras_api_only_in_the_compat_module():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "compat.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert offenders == []


def test_the_declared_keras_range_is_pyproject_s():
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'"keras{compat.KERAS_RANGE}"' in pyproject
    assert compat._version(keras.__version__) >= compat._version(compat.KERAS_MIN)


@tf_only("Keras' TensorFlow trainer is the one that defers building to the first trace")
@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_fit_traces_the_gradmix_step_once_and_trains_as_before(kind, monkeypatch):
    """Without a strategy Keras builds the optimizer and metrics inside the
    first trace, and tf.function traces again; GradMixModel builds them first
    (compat.build_before_tracing): one trace, bit-identical training."""
    from keras_gradmix.steps import tensorflow as step

    traces, real = [], step.train_step
    monkeypatch.setattr(step, "train_step", lambda *a, **k: traces.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 28, 28, 1), dtype=np.float32), rng.integers(0, 3, 48)
    factory, layer = MODEL_FACTORIES[kind]

    def trained():
        gm = GradMixModel(factory(classes=3, seed=0), layer=layer, seed=0)
        gm.compile(keras.optimizers.Adam(1e-2), sparse_ce(), metrics=["accuracy"])
        traces.clear()
        history = gm.fit(x, y, batch_size=16, epochs=2, verbose=0).history
        return len(traces), [np.asarray(w) for w in gm.weights + gm.optimizer.variables], history

    count, weights, history = trained()
    monkeypatch.setattr(compat, "build_before_tracing", lambda model, batch: None)  # Keras' way
    deferred_count, deferred_weights, deferred_history = trained()
    assert (count, deferred_count) == (1, 2)
    assert history == deferred_history
    assert all(np.array_equal(a, b) for a, b in zip(weights, deferred_weights, strict=True))
