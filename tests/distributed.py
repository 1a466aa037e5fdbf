"""Subprocess side of tests/test_distribute.py (tf.distribute needs a fresh process).

    python tests/distributed.py mirrored OUT.npz
        one GradMix step under MirroredStrategy on two logical CPU devices and
        the same step on one device; writes both weight sets.
    python tests/distributed.py worker INDEX PORT0,PORT1 OUT.npz
        one of two MultiWorkerMirroredStrategy workers on 127.0.0.1; trains a
        few GradMix steps and writes its weights.
    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \
    python tests/distributed.py data_parallel OUT.npz
        one GradMix step under keras.distribution.DataParallel on two host CPU
        devices and the same step on one device.
    KERAS_BACKEND=jax python tests/distributed.py jax_process INDEX PORT OUT.npz
        one of two JAX processes (keras.distribution.initialize, CPU collectives
        over gloo) training GradMix steps under DataParallel on its half of each
        global batch; writes its weights.
    KERAS_BACKEND=torch torchrun --nproc-per-node 2 tests/distributed.py torch_process OUT_DIR
        two PyTorch processes (torch.distributed over gloo) training GradMix
        steps on their halves of each global batch.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

GLOBAL_BATCH = 16


def digits(n=64):
    """sklearn's 8x8 digits in [0, 1]: small real images."""
    data = load_digits()
    x = (data.images[:n, :, :, None] / 16.0).astype("float32")
    return x, data.target[:n].astype("int32")


def gradmix_model(**options):
    import keras

    from keras_gradmix import GradMixModel

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    # A constant fill and one area per batch: the masks depend on the maps and
    # the seed only, not on how the batch is split over replicas.
    gm = GradMixModel(model, "conv2", attribution="layercam", fill=0.5, seed=7, **options)
    gm.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return gm


def dataset(steps):
    import tensorflow as tf

    x, y = digits(GLOBAL_BATCH * steps)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


def weights(gm):
    return {f"w{i}": np.asarray(w) for i, w in enumerate(gm.model.weights)}


def record(result, mode, **runs):
    """Adds ``{run: {weight: value}}`` as ``result["<mode>/<run>/<weight>"]``."""
    for run, values in runs.items():
        for name, value in values.items():
            result[f"{mode}/{run}/{name}"] = value


def plain_step(*data):
    """The same start, one step without GradMix."""
    import keras

    model = gradmix_model().model
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data, batch_size=GLOBAL_BATCH, verbose=0)
    return {f"w{i}": np.asarray(w) for i, w in enumerate(model.weights)}


def mirrored(out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    result = {}
    for mode in ("paired", "replace"):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            gm = gradmix_model(mode=mode)
        initial = weights(gm)
        gm.fit(dataset(1), verbose=0)
        single = gradmix_model(mode=mode)
        single.fit(dataset(1), verbose=0)
        plain = plain_step(*digits(GLOBAL_BATCH))
        record(result, mode, initial=initial, distributed=weights(gm),
               single=weights(single), plain=plain)
    np.savez(out, **result)


BAD_ROW = GLOBAL_BATCH + GLOBAL_BATCH // 2 + 3  # global batch 1, the second replica's half


def spoiled(x):
    """``x`` with a NaN pixel in the second replica's (process's) share of batch 1."""
    x = x.copy()
    x[BAD_ROW, 0, 0, 0] = np.nan
    return x


def guarded_fit(gm, *data, **kwargs):
    """``gm.fit``; the guard's error message, or "" if none."""
    try:
        gm.fit(*data, verbose=0, shuffle=False, **kwargs)
    except FloatingPointError as error:
        return str(error)
    return ""


def mirrored_bad_shard(out):
    """Two replicas; batch 1's NaN is on the second replica only. Written: the
    error, each replica's weights after it, and the weights after batch 0 alone."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = digits(GLOBAL_BATCH * 2)
    with strategy.scope():
        gm = gradmix_model(check_inputs=False)
        before = gradmix_model(check_inputs=False)
    bad = tf.data.Dataset.from_tensor_slices((spoiled(x), y)).batch(GLOBAL_BATCH)
    message = guarded_fit(gm, bad)
    before.fit(tf.data.Dataset.from_tensor_slices((x[:GLOBAL_BATCH], y[:GLOBAL_BATCH])).batch(
        GLOBAL_BATCH), verbose=0)
    replicas = {f"replica{r}/w{i}": np.asarray(w.value.values[r])
                for i, w in enumerate(gm.model.weights) for r in range(2)}
    np.savez(out, message=message, **replicas,
             **{f"before/{k}": v for k, v in weights(before).items()})


def worker(index, ports, out):
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
            "task": {"type": "worker", "index": int(index)},
        }
    )
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        gm = gradmix_model()
        gm.optimizer.build(gm.trainable_variables)

    # Keras 3's fit() fails under MultiWorkerMirroredStrategy for every model
    # (keras-team/keras#20585); this is the README's custom loop.
    @tf.function
    def train_step(batch):
        logs = strategy.run(gm.train_step, args=(batch,))
        return strategy.reduce("MEAN", logs["loss"], axis=None)

    losses = []
    for epoch in range(1):
        gm.epoch.assign(epoch)
        for batch in strategy.experimental_distribute_dataset(dataset(3)):
            losses.append(float(train_step(batch)))
    np.savez(out, losses=np.array(losses), **weights(gm))


def data_parallel(out):
    import jax
    import keras

    assert keras.backend.backend() == "jax" and len(jax.devices()) == 2
    x, y = digits(GLOBAL_BATCH)
    result = {}
    for mode in ("paired", "replace"):
        single = gradmix_model(mode=mode)
        initial = weights(single)
        single.fit(x, y, batch_size=GLOBAL_BATCH, verbose=0)
        plain = plain_step(x, y)
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        try:
            parallel = gradmix_model(mode=mode)
            parallel.fit(x, y, batch_size=GLOBAL_BATCH, verbose=0)
            sharding = parallel.model.weights[0].value.sharding
            assert len(sharding.device_set) == 2  # replicated over both devices
        finally:
            keras.distribution.set_distribution(None)
        record(result, mode, initial=initial, distributed=weights(parallel),
               single=weights(single), plain=plain)
    np.savez(out, **result)


PROCESS_STEPS = 2


def process_shard(index, processes=2):
    """Process ``index``'s share of each global batch: rows ``[i * 8, i * 8 + 8)``
    of every 16 (Keras' multi-process DataParallel concatenates the processes'
    local batches in process order)."""
    x, y = digits(GLOBAL_BATCH * PROCESS_STEPS)
    local = GLOBAL_BATCH // processes
    rows = np.concatenate([np.arange(s * GLOBAL_BATCH + index * local, s * GLOBAL_BATCH + (index + 1) * local)
                           for s in range(PROCESS_STEPS)])
    return x[rows], y[rows]


def jax_process(index, port, out):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU all-reduce across processes
    import keras

    index = int(index)
    keras.distribution.initialize(job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=index)
    assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    # Each process passes its own shard (NumPy), so no auto-sharding of a tf.data pipeline.
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
    gm = gradmix_model(mode="paired", probability=1.0)
    x, y = process_shard(index)
    history = gm.fit(x, y, batch_size=GLOBAL_BATCH // 2, shuffle=False, verbose=0)
    np.savez(out, loss=history.history["loss"], **weights(gm))


def jax_process_bad_shard(index, port, out):
    """As :func:`jax_process`, with batch 1's NaN in process 1's shard only."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    index = int(index)
    keras.distribution.initialize(job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=index)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
    gm = gradmix_model(mode="paired", probability=1.0, check_inputs=False)
    x, y = process_shard(index)
    if index == 1:
        x[GLOBAL_BATCH // 2 + 3, 0, 0, 0] = np.nan  # its batch 1
    message = guarded_fit(gm, x, y, batch_size=GLOBAL_BATCH // 2)
    np.savez(out, message=message, **weights(gm))


def torch_process_bad_shard(out_dir):
    """As :func:`torch_process`, with batch 1's NaN in rank 1's shard only."""
    import torch

    torch.distributed.init_process_group("gloo")
    index = torch.distributed.get_rank()
    try:
        gm = gradmix_model(mode="paired", probability=1.0, check_inputs=False)
        x, y = process_shard(index, torch.distributed.get_world_size())
        if index == 1:
            x[GLOBAL_BATCH // 2 + 3, 0, 0, 0] = np.nan
        message = guarded_fit(gm, x, y, batch_size=GLOBAL_BATCH // 2)
        np.savez(os.path.join(out_dir, f"process{index}.npz"), message=message, **weights(gm))
    finally:
        torch.distributed.destroy_process_group()


def torch_process(out_dir):
    """One of the processes ``torchrun --nproc-per-node 2`` starts (it sets
    RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT); writes
    ``out_dir/process<RANK>.npz``."""
    import torch

    torch.distributed.init_process_group("gloo")  # env://, as torchrun sets it up
    index = torch.distributed.get_rank()
    try:
        gm = gradmix_model(mode="paired", probability=1.0)
        x, y = process_shard(index, torch.distributed.get_world_size())
        history = gm.fit(x, y, batch_size=GLOBAL_BATCH // 2, shuffle=False, verbose=0)
        wrapper = type(getattr(gm, "ddp_model", None)).__name__  # Keras > 3.15 wraps it in DDP
        np.savez(os.path.join(out_dir, f"process{index}.npz"), loss=history.history["loss"],
                 ddp=wrapper, **weights(gm))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    {"mirrored": mirrored, "worker": worker, "data_parallel": data_parallel,
     "jax_process": jax_process, "torch_process": torch_process,
     "mirrored_bad_shard": mirrored_bad_shard, "jax_process_bad_shard": jax_process_bad_shard,
     "torch_process_bad_shard": torch_process_bad_shard}[sys.argv[1]](
        *sys.argv[2:]
    )
