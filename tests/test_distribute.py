"""GradMix under tf.distribute and keras.distribution (JAX); each runs in fresh
processes (tests/distributed.py): logical devices, TF_CONFIG and XLA_FLAGS must
be set before the backend starts."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
tf_distribute = pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
SCRIPT = str(Path(__file__).with_name("distributed.py"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def run(*args, env=ENV, timeout=240):
    subprocess.run([sys.executable, SCRIPT, *map(str, args)], check=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def two_device_weights(tmp_path_factory):
    """MirroredStrategy (TensorFlow) or DataParallel (JAX) over two CPU devices."""
    out = tmp_path_factory.mktemp("two_devices") / "weights.npz"
    if BACKEND == "tensorflow":
        run("mirrored", out)
    elif BACKEND == "jax":
        run("data_parallel", out, env={**ENV, "JAX_PLATFORMS": "cpu",
                                       "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    else:
        pytest.skip(f"no two-device data parallelism tested on {BACKEND}")
    return np.load(out)


@pytest.mark.parametrize("mode", ["paired", "replace"])
def test_two_device_step_equals_the_single_device_step(two_device_weights, mode):
    weights = two_device_weights
    names = [k.split("/")[-1] for k in weights if k.startswith(f"{mode}/initial/")]

    def diff(a, b):
        return max(np.abs(weights[f"{mode}/{a}/{n}"] - weights[f"{mode}/{b}/{n}"]).max() for n in names)

    # Two replicas of 8 images each take the step one device takes on all 16.
    assert diff("distributed", "single") < 1e-5
    # The step moved the weights, and the masked term mattered.
    assert diff("distributed", "initial") > 1e-2
    assert diff("single", "plain") > 1e-3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(commands, env, timeout):
    """Starts every command at once (they join one collective) and waits for all."""
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for command in commands]
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            assert process.returncode == 0, output[-3000:]
    finally:
        for process in processes:  # a hung collective must not outlive the test
            process.kill()
            process.wait()


@tf_distribute
def test_multi_worker_mirrored_workers_end_with_identical_weights(tmp_path):
    ports = f"{free_port()},{free_port()}"
    outs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    run_together([[sys.executable, SCRIPT, "worker", str(i), ports, str(out)]
                  for i, out in enumerate(outs)], ENV, timeout=180)
    first, second = (np.load(out) for out in outs)
    assert len(first["losses"]) == 3 and np.isfinite(first["losses"]).all()
    np.testing.assert_array_equal(first["losses"], second["losses"])
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])


def two_processes(tmp_path, env, scenario="process"):
    """Two processes of ``tests/distributed.py <backend>_<scenario>``: JAX's
    started here, PyTorch's by ``torchrun``; their outputs."""
    port = free_port()
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    if BACKEND == "torch":
        commands = [[sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                     "--master-addr", "127.0.0.1", "--master-port", str(port),
                     SCRIPT, f"torch_{scenario}", str(tmp_path)]]
    else:
        commands = [[sys.executable, SCRIPT, f"jax_{scenario}", str(i), str(port), str(out)]
                    for i, out in enumerate(outs)]
    run_together(commands, env, timeout=240)
    return [np.load(out) for out in outs]


@pytest.mark.skipif(BACKEND not in ("jax", "torch"),
                    reason="several processes: keras.distribution (JAX), torch.distributed (PyTorch)")
def test_two_processes_train_like_one_process_on_the_whole_batch(tmp_path):
    """Two local processes (JAX: keras.distribution.initialize and DataParallel
    over one CPU device each, gloo collectives; PyTorch: ``torchrun``,
    torch.distributed over gloo) end with identical weights, equal to one
    process's GradMix steps on the concatenated batches (constant fill,
    probability 1)."""
    from distributed import GLOBAL_BATCH, PROCESS_STEPS, digits, gradmix_model, weights

    env = {**ENV, "JAX_PLATFORMS": "cpu"}
    first, second = two_processes(tmp_path, env)
    if BACKEND == "torch":  # Keras after 3.15 wraps the model in DDP (its step is not used)
        import keras

        has_ddp = hasattr(keras.Sequential(), "ddp_model")
        assert str(first["ddp"]) == ("DistributedDataParallel" if has_ddp else "NoneType")
    names = [k for k in first.files if k.startswith("w")]
    for name in names:
        np.testing.assert_array_equal(first[name], second[name])
    x, y = digits(GLOBAL_BATCH * PROCESS_STEPS)
    single = gradmix_model(mode="paired", probability=1.0)
    start = weights(single)
    single.fit(x, y, batch_size=GLOBAL_BATCH, shuffle=False, verbose=0)
    expected = weights(single)
    assert max(np.abs(expected[n] - start[n]).max() for n in names) > 1e-2  # the steps moved them
    for name in names:
        np.testing.assert_allclose(first[name], expected[name], rtol=1e-4, atol=1e-5)


BAD_SHARD = r"not finite at epoch 0, batch 1"


@tf_distribute
def test_a_bad_shard_on_one_replica_holds_every_replica(tmp_path):
    """MirroredStrategy over two logical CPUs; batch 1's NaN is in the second
    replica's half only: both skip the update and record it (the error names
    the batch), and both keep batch 0's weights, identical across replicas."""
    out = tmp_path / "bad_shard.npz"
    run("mirrored_bad_shard", out)
    result = np.load(out)
    assert re.search(BAD_SHARD, str(result["message"])), str(result["message"])
    names = [k.split("/")[1] for k in result.files if k.startswith("replica0/")]
    for name in names:
        np.testing.assert_array_equal(result[f"replica0/{name}"], result[f"replica1/{name}"])
        np.testing.assert_allclose(result[f"replica0/{name}"], result[f"before/{name}"], atol=1e-6)


@pytest.mark.skipif(BACKEND not in ("jax", "torch"),
                    reason="several processes: keras.distribution (JAX), torch.distributed (PyTorch)")
def test_a_bad_shard_in_one_process_holds_every_process(tmp_path):
    """Two processes; batch 1's NaN is in process 1's shard only: both raise the
    guard's error naming batch 1 (none hangs in a collective the other left),
    and both keep the same weights."""
    first, second = two_processes(tmp_path, {**ENV, "JAX_PLATFORMS": "cpu"}, "process_bad_shard")
    for result in (first, second):
        assert re.search(BAD_SHARD, str(result["message"])), str(result["message"])
    for name in (k for k in first.files if k.startswith("w")):
        np.testing.assert_array_equal(first[name], second[name])
