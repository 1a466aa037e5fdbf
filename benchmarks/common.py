"""What the example studies share: the methods' training recipes, resumable
per-run results and run metadata. TensorFlow (tf.data) is needed here.

``train(method, ...)`` trains :func:`keras_gradmix.zoo.lean_cnn` with one of
``METHODS`` under the benchmarks' schedule (Adam 1e-3, cosine decay to 0):

* ``plain``; ``cutmix`` / ``mixup``: Keras' own layers in the tf.data pipeline;
* ``gradmix`` / ``gradmix-replace``: :class:`~keras_gradmix.GradMixModel` with
  ``GRADMIX`` (the authors' configuration) updated by ``options``;
* ``supcon`` / ``supcon+gradmix``: the paper's contrastive recipe on two views;
* ``simclr`` / ``simclr+gradmix``: the same without labels (SimCLR's NT-Xent
  alone; the GradMix positives from its attribution), for a linear probe.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time

import keras
import numpy as np

from keras_gradmix.contrastive import GradMixContrastive, SupConModel
from keras_gradmix.data import OSRData, load_arrays, load_osr_split, osr_classes, two_views
from keras_gradmix.model import GradMixModel
from keras_gradmix.zoo import lean_cnn

METHODS = ("plain", "cutmix", "mixup", "gradmix", "gradmix-replace", "supcon", "supcon+gradmix")
SSL_METHODS = ("simclr", "simclr+gradmix")  # no labels: for a linear probe, not an OSR table
CONTRASTIVE = ("supcon", "supcon+gradmix", *SSL_METHODS)
SELF_SUPERVISED = dict(supcon_weight=0.0, ssl_weight=1.0)  # no label enters the loss
# GradMix as the authors' code: LayerCAM summed over the last two stages,
# noise boxes at the peak covering 10-50 %, paired with the clean loss.
GRADMIX = dict(layer=["stage2", "stage3"], attribution="layercam", mask_area=(0.1, 0.5))


def pixels(x) -> np.ndarray:
    """uint8 images (N, H, W) as float32 (N, H, W, 1) in [0, 1]."""
    return (np.asarray(x, np.float32) / 255.0)[..., None]


def first_per_class(y, classes, per_class: int | None) -> np.ndarray:
    """Indices, in dataset order, of the first ``per_class`` images of each of
    ``classes`` (all of them for 0 or None)."""
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class or None] for c in classes]))


def open_set_arrays(dataset: str, split: int, per_class: int | None = None, data_dir=None,
                    limit_test: int | None = None) -> dict:
    """A small-data open-set split as arrays: ``train`` (the first ``per_class``
    training images of each known class, labels 0..K-1), ``known_test`` (images,
    labels) and ``unknown_test`` (images), all images float32 in [0, 1]."""
    arrays = load_arrays(dataset, data_dir)
    known, _ = osr_classes(dataset, split)
    remap = np.full(10, -1)
    remap[known] = np.arange(len(known))
    x, y = arrays["x_train"], arrays["y_train"]
    keep = first_per_class(y, known, per_class)
    test_known = np.isin(arrays["y_test"], known)
    return {
        "train": (pixels(x[keep]), remap[y[keep]].astype(np.int64)),
        "known_test": (pixels(arrays["x_test"][test_known])[:limit_test],
                       remap[arrays["y_test"][test_known]][:limit_test]),
        "unknown_test": pixels(arrays["x_test"][~test_known])[:limit_test],
    }


def shuffled_batches(x, y, seed: int, batch_size: int, drop_remainder: bool = False):
    """``(x, y)`` reshuffled every epoch in an order that depends on ``seed``
    alone: the global seed is set first, because a tf.data shuffle's order also
    depends on it, and otherwise on whatever ran before in the process."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size, drop_remainder=drop_remainder))


def view_pairs(ds, seed: int):
    """Two augmented views per image (random shift up to 10 %, horizontal flip)."""
    import tensorflow as tf

    augment = keras.Sequential([
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
        keras.layers.RandomFlip("horizontal", seed=seed + 1),
    ])
    return two_views(ds, lambda x: augment(x, training=True)).prefetch(tf.data.AUTOTUNE)


def one_hot_batches(ds, classes: int, method: str, seed: int):
    """(images, one-hot labels); CutMix/MixUp applied per batch in tf.data."""
    import tensorflow as tf

    ds = ds.map(lambda x, y: (x, tf.one_hot(y, classes)), num_parallel_calls=tf.data.AUTOTUNE)
    if method in ("cutmix", "mixup"):
        mixer = keras.layers.CutMix(seed=seed) if method == "cutmix" else keras.layers.MixUp(seed=seed)

        def mix(x, y):
            out = mixer({"images": x, "labels": y}, training=True)
            return out["images"], out["labels"]

        # Sequential: the layer's seed generator is a variable, and parallel
        # calls would advance it in a different order on every run.
        ds = ds.map(mix)
    return ds.prefetch(tf.data.AUTOTUNE)


def train(method: str, train_data, classes: int, seed: int, epochs: int, verbose=0,
          options: dict | None = None, recipe: dict | None = None) -> tuple[keras.Model, float]:
    """The lean CNN trained with ``method`` on ``(images, integer labels)``
    batches; returns the model (the encoder for contrastive methods) and the
    training time in seconds. ``options`` update ``GRADMIX`` for the GradMix
    methods; ``recipe``: :class:`~keras_gradmix.contrastive.Contrastive`
    arguments (``temperature``...) of the contrastive ones."""
    input_shape = tuple(train_data.element_spec[0].shape[1:])
    contrastive = method in CONTRASTIVE
    model = lean_cnn(input_shape, classes, seed, projection=contrastive)
    steps = int(train_data.cardinality()) if train_data.cardinality() > 0 else None
    if steps is None:
        steps = sum(1 for _ in train_data)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=epochs * steps)
    gradmix = {**GRADMIX, **(options or {})}
    trainer = model
    if method.startswith("gradmix"):
        mode = gradmix.pop("mode", "paired")
        mode = "replace" if method == "gradmix-replace" else mode
        trainer = GradMixModel(model, mode=mode, seed=seed, **gradmix)
    recipe = {**(SELF_SUPERVISED if method.startswith("simclr") else {}), **(recipe or {})}
    if method in ("supcon", "simclr"):
        trainer = SupConModel(model, **recipe)
    elif method in ("supcon+gradmix", "simclr+gradmix"):
        trainer = GradMixContrastive(model, seed=seed, **gradmix, **recipe)
    elif method not in METHODS + SSL_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {METHODS + SSL_METHODS}.")
    loss = None if contrastive else keras.losses.CategoricalCrossentropy(from_logits=True)
    trainer.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    batches = (view_pairs(train_data, seed) if contrastive
               else one_hot_batches(train_data, classes, method, seed))
    start = time.perf_counter()
    trainer.fit(batches, epochs=epochs, verbose=verbose)
    return model, time.perf_counter() - start


def parse_methods(parser, text: str, choices) -> list[str]:
    """Comma-separated methods, each one of ``choices`` (else ``parser.error``)."""
    methods = text.split(",")
    unknown = [m for m in methods if m not in choices]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {choices}")
    return methods


def cached_run(path: str, epochs: int, title: str, compute) -> dict:
    """The run stored at ``path`` if it trained for ``epochs``, else
    ``compute()``, stored there once complete (so a study resumes)."""
    if os.path.exists(path):
        with open(path) as f:
            run = json.load(f)
        if run.get("epochs") == epochs:
            print(f"skip {path} (done)")
            return run
    print(f"== {title} ==", flush=True)
    run = compute()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(run, f, indent=1)
    os.replace(path + ".tmp", path)  # a run counts only once complete
    return run


def machine() -> str:
    """Architecture, CPU count and platform, for result files."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


@contextlib.contextmanager
def cifar10_split(args):
    """The CIFAR-10 open-set split ``args.split``, as ``(data, evaluation,
    steps, steps_per_epoch)``: ``data`` from :func:`load_osr_split`,
    ``evaluation`` the same three datasets for the evaluation callbacks,
    ``steps`` for ``fit`` (None: whole epochs). With ``args.smoke``: tfds mock
    data (offline), width 8, batch 16, one epoch of 2 steps, evaluation on 2
    batches after every epoch (``args`` is updated)."""
    steps, mock = None, contextlib.nullcontext()
    if args.smoke:
        import tensorflow_datasets as tfds

        mock = tfds.testing.mock_data(num_examples=64)
        args.epochs, args.width, args.batch_size, args.eval_every, steps = 1, 8, 16, 1, 2
    with mock:
        data = load_osr_split("cifar10", args.split, batch_size=args.batch_size,
                              data_dir=args.data_dir)
        evaluation = OSRData(*(d.take(2) for d in data)) if args.smoke else data
        yield data, evaluation, steps, steps or sum(1 for _ in data.known_train)
