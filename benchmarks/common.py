"""What the studies in benchmarks/ share: the methods' training recipes, resumable
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

import json
import os
import time
from typing import Mapping, Sequence

import keras
import numpy as np

from keras_gradmix.contrastive import GradMixContrastive, SupConModel
from keras_gradmix.data import load_arrays, osr_classes, two_views
from keras_gradmix.model import GradMixModel
from keras_gradmix.osr import evaluate_model_open_set
from keras_gradmix.zoo import lean_cnn
from timing import machine  # one description of the machine for every result file

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
          options: dict | None = None, recipe: dict | None = None,
          logs: dict | None = None, callbacks=None) -> tuple[keras.Model, float]:
    """The lean CNN trained with ``method`` on ``(images, integer labels)``
    batches; returns the model (the encoder for contrastive methods) and the
    training time in seconds. ``options`` update ``GRADMIX`` for the GradMix
    methods; ``recipe``: :class:`~keras_gradmix.contrastive.Contrastive`
    arguments (``temperature``...) of the contrastive ones. ``logs``, if given,
    receives the History's masking metrics per epoch (``gradmix_area``...);
    ``callbacks`` go to ``fit`` (their ``model`` is the trainer)."""
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
    history = trainer.fit(batches, epochs=epochs, verbose=verbose, callbacks=callbacks).history
    if logs is not None:
        logs.update({k: [float(v) for v in values] for k, values in history.items()
                     if k.startswith("gradmix_")})
    return model, time.perf_counter() - start


def train_and_score(data: dict, method: str, options: dict, seed: int, epochs: int,
                    batch_size: int, scores, feature_layer: str | None = None,
                    logs: dict | None = None, after=None):
    """Trains ``method`` on an :func:`open_set_arrays` split's ``train`` images
    (batches shuffled by ``seed``) and scores its known and unknown test images;
    feature scores are fitted on the training images. Returns ``(results,
    train seconds)``; ``logs`` as in :func:`train`, and ``logs["after"]`` what
    ``after(model, data)`` returns for the trained model, if given."""
    import tensorflow as tf

    def batches(arrays):
        return tf.data.Dataset.from_tensor_slices(arrays).batch(512)

    x, y = data["train"]
    model, seconds = train(method, shuffled_batches(x, y, seed, batch_size), int(y.max()) + 1,
                           seed, epochs, options=options, logs=logs)
    if after is not None:
        logs["after"] = after(model, data)
    results = evaluate_model_open_set(
        model, batches(data["known_test"]), batches(data["unknown_test"]), scores,
        feature_layer=feature_layer, train_data=batches((x, y)) if feature_layer else None)
    return results, seconds


def parse_methods(parser, text: str, choices) -> list[str]:
    """Comma-separated methods, each one of ``choices`` (else ``parser.error``)."""
    methods = text.split(",")
    unknown = [m for m in methods if m not in choices]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {choices}")
    return methods


def cached_run(path: str, epochs: int, title: str, compute) -> dict:
    """The run stored at ``path`` if it trained for ``epochs``, else
    ``compute()`` with the ``machine`` it ran on, stored there once complete
    (so a study resumes)."""
    if os.path.exists(path):
        with open(path) as f:
            run = json.load(f)
        if run.get("epochs") == epochs:
            print(f"skip {path} (done)")
            return run
    print(f"== {title} ==", flush=True)
    run = compute()
    # Where it trained: a study's runs may come from machines of different speed.
    run.setdefault("machine", machine())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(run, f, indent=1)
    os.replace(path + ".tmp", path)  # a run counts only once complete
    return run


# ------------------------------------------------- paired statistics
def mean_std(rows: Sequence[Mapping], by: Sequence[str], values: Sequence[str]) -> list[dict]:
    """One row per distinct ``by`` combination (first-seen order): the ``by``
    keys, ``runs`` (rows in the group), and per value ``v`` its mean ``v`` and
    population standard deviation ``v_std``."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in by), []).append(row)
    out = []
    for key, members in groups.items():
        row = dict(zip(by, key), runs=len(members))
        for value in values:
            numbers = np.array([m[value] for m in members], dtype=np.float64)
            row[value], row[f"{value}_std"] = float(numbers.mean()), float(numbers.std())
        out.append(row)
    return out


def paired_differences(rows: Sequence[Mapping], value: str, baseline: str, by: str = "method",
                       pair: Sequence[str] = ("split", "seed"), confidence: float = 0.95) -> list[dict]:
    """Each group's per-pair difference to ``baseline`` on the same ``pair``
    keys (e.g. the same split and seed): ``value(group) - value(baseline)``.

    One row per group other than the baseline (first-seen order): ``by``,
    ``pairs`` (pairs found in both), ``diff`` (mean difference), ``ci_low`` and
    ``ci_high`` (a t-interval at ``confidence`` over the pairs: mean ±
    t(n-1) · sd / sqrt(n), sd with n - 1; None for fewer than two pairs) and
    ``wins`` (pairs where the group is higher).

    Examples:
        >>> rows = [{"method": m, "split": 0, "seed": s, "auroc": a} for m, s, a in
        ...         [("plain", 0, .60), ("plain", 1, .62), ("gm", 0, .63), ("gm", 1, .64)]]
        >>> [round(r["diff"], 3) for r in paired_differences(rows, "auroc", "plain")]
        [0.025]
    """
    from scipy import stats

    def key(row):
        return tuple(row[k] for k in pair)

    base = {key(r): r[value] for r in rows if r[by] == baseline}
    out = []
    for group in dict.fromkeys(r[by] for r in rows if r[by] != baseline):
        diffs = np.array([r[value] - base[key(r)] for r in rows
                          if r[by] == group and key(r) in base], dtype=np.float64)
        row = {by: group, "pairs": len(diffs), "diff": float(diffs.mean()) if len(diffs) else None,
               "ci_low": None, "ci_high": None, "wins": int((diffs > 0).sum())}
        if len(diffs) >= 2:
            half = stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
            row["ci_low"], row["ci_high"] = float(diffs.mean() - half), float(diffs.mean() + half)
        out.append(row)
    return out


def paired_cells(row: Mapping) -> dict:
    """Table cells of one :func:`paired_differences` row: ``pairs``, ``mean
    difference``, ``95 % CI`` (``[low, high]``, "–" under two pairs), ``wins``.

    Examples:
        >>> paired_cells({"pairs": 3, "diff": 1.5, "ci_low": -0.25, "ci_high": 3.25, "wins": 2})
        {'pairs': 3, 'mean difference': '+1.50', '95 % CI': '[-0.25, +3.25]', 'wins': '2/3'}
    """
    interval = "–" if row["ci_low"] is None else f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    return {"pairs": row["pairs"], "mean difference": f"{row['diff']:+.2f}", "95 % CI": interval,
            "wins": f"{row['wins']}/{row['pairs']}"}


def paired_text(row: Mapping | None) -> str:
    """One :func:`paired_differences` row as one cell: ``"+1.50 [-0.25, +3.25]
    (2/3)"`` (no interval under two pairs; "–" without a pair).

    Examples:
        >>> paired_text({"pairs": 3, "diff": 1.5, "ci_low": -0.25, "ci_high": 3.25, "wins": 2})
        '+1.50 [-0.25, +3.25] (2/3)'
    """
    if row is None or row["diff"] is None:
        return "–"
    cells = paired_cells(row)
    interval = "" if row["ci_low"] is None else f" {cells['95 % CI']}"
    return f"{cells['mean difference']}{interval} ({cells['wins']})"
