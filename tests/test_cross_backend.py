"""TensorFlow, JAX and PyTorch run the same GradMix maths: same masks, same step."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import sequential_cnn, tf_only

BACKENDS = ("tensorflow", "jax", "torch")
missing = [b for b in BACKENDS if importlib.util.find_spec(b) is None]
pytestmark = [
    pytest.mark.skipif(bool(missing), reason=f"backends not installed: {missing}"),
    tf_only("runs every backend itself, in subprocesses"),
]
SCRIPT = Path(__file__).with_name("cross_backend.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist):
    tmp = tmp_path_factory.mktemp("cross_backend")
    model = sequential_cnn(bn=True)
    rng = np.random.default_rng(1)
    weights = {f"w{i}": (0.2 * rng.standard_normal(w.shape)).astype("float32")
               if "moving_variance" not in w.path else np.ones(w.shape, "float32")
               for i, w in enumerate(model.weights)}
    np.savez(tmp / "in.npz", x=mnist[0][:16], y=mnist[1][:16],
             sample_weight=rng.uniform(0, 2, 16).astype("float32"), **weights)
    processes = {}
    for backend in BACKENDS:  # at once: most of each one's time is importing its framework
        env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "",
               "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(SCRIPT.parent)}
        processes[backend] = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(tmp / "in.npz"), str(tmp / f"{backend}.npz")], env=env)
    for backend, process in processes.items():
        assert process.wait(timeout=300) == 0, f"the {backend} run failed"
    return weights, {backend: np.load(tmp / f"{backend}.npz") for backend in BACKENDS}


@pytest.mark.parametrize("config", ["paired-layercam", "replace-gradcam++-loss"])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow(runs, backend, config):
    initial, runs = runs
    tf_run, other = runs["tensorflow"], runs[backend]
    assert str(other["backend"]) == backend
    mask = other[f"{config}/mask"]
    assert 0.05 < mask.mean() <= 0.25  # boxes of a quarter of the image on the masked images
    np.testing.assert_array_equal(mask, tf_run[f"{config}/mask"])
    np.testing.assert_allclose(other[f"{config}/maps"], tf_run[f"{config}/maps"], atol=1e-4)
    np.testing.assert_allclose(other[f"{config}/loss"], tf_run[f"{config}/loss"], rtol=1e-5)
    # The update (gradients and BatchNorm statistics), within float tolerance.
    for name, start in initial.items():
        expected = tf_run[f"{config}/{name}"] - start
        assert np.abs(expected).max() > 1e-4, name  # every weight moved
        np.testing.assert_allclose(other[f"{config}/{name}"] - start, expected,
                                   rtol=1e-3, atol=1e-6 + 1e-3 * np.abs(expected).max())
