"""Open-set recognition on time series: plain training vs GradMix over time.

UCR/UEA classification sets shipped inside the ``aeon`` wheel (offline: the
``timeseries`` extra, or ``pip install --no-deps aeon`` for the data alone;
the ``.ts`` files are read here, aeon itself is not imported):
JapaneseVowels (9 speakers, 12 channels, 25 steps, the equal-length version),
ACSF1 (10 appliances, 1 channel, 1,460 steps), OSULeaf (6 leaf species, 1
channel, 427 steps). Each split holds out a random third of the classes (3, 4
and 2) as unknowns: training on the training series of the known classes,
testing on every test series (known: closed-set accuracy; unknown: open-set).
Series are standardised per channel with the known training series' mean and
deviation.

The model is the fully convolutional network of Wang et al. (2017), as in
keras.io's "Timeseries classification from scratch": three Conv1D-BN-ReLU
blocks (64, 128, 64 filters; kernels 8, 5, 3), global average pooling, a
dense head. Adam 1e-3 with cosine decay to 0, batch 32. GradMix attributes
the last block (LayerCAM), masks a contiguous span of 10-50 % of the series
(area-exact, shifted inside), fills it with 0 (the standardised mean), paired.
Cells: plain; GradMix at the peak and at a random place, with masked series
as positives (the paper) and as outliers (toward the uniform distribution).
Scores: the max logit (MLS) and kNN (Sun et al., k = 1: their choice for a
small, sampled training set; these have 40-180 training series) on the pooled
features. Paired differences per (dataset, split, seed).

    python benchmarks/timeseries.py                       # every dataset, splits 0-4, seeds 0-1
    python benchmarks/timeseries.py --finished-only       # summarise the runs there
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from common import cached_run, machine, paired_differences, paired_text  # noqa: E402
from keras_gradmix import GradMixModel  # noqa: E402
from keras_gradmix.osr import evaluate_model_open_set  # noqa: E402
from keras_gradmix.tables import to_markdown  # noqa: E402

# name: (file stem, unknown classes per split, epochs)
DATASETS = {"JapaneseVowels": ("JapaneseVowels_eq", 3, 150), "ACSF1": ("ACSF1", 4, 150),
            "OSULeaf": ("OSULeaf", 2, 150)}
CELLS = {"plain": None, "gradmix": {}, "gradmix-random": {"placement": "random"},
         "outlier-peak": {"masked_as": "outlier"},
         "outlier-random": {"masked_as": "outlier", "placement": "random"}}
GRADMIX = dict(layer="block3", attribution="layercam", mask_area=(0.1, 0.5), fill=0.0)
METRICS = {"accuracy": "mls/accuracy", "AUROC (MLS)": "mls/auroc", "AUROC (kNN)": "knn/auroc",
           "OSCR (MLS)": "mls/oscr"}


def read_ts(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``.ts`` file of equal-length series: ``(N, T, C)`` float32 values and
    ``(N,)`` string labels (each line: the channels separated by ``:``, their
    values by ``,``, the label last)."""
    series, labels, data = [], [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not data:
                data = line.lower() == "@data"
                continue
            *channels, label = line.split(":")
            series.append([[float(v) for v in c.split(",")] for c in channels])
            labels.append(label.strip())
    lengths = {len(c) for s in series for c in s}
    if len(lengths) != 1:
        raise ValueError(f"{path}: series of unequal lengths {sorted(lengths)[:5]}; use an equal-length set.")
    return np.asarray(series, np.float32).transpose(0, 2, 1), np.asarray(labels)


def data_dir() -> str:
    spec = importlib.util.find_spec("aeon")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("The UCR/UEA sets come inside the aeon wheel: pip install -e '.[timeseries]' "
                         "(or pip install --no-deps aeon for the data alone).")
    return os.path.join(os.path.dirname(spec.origin), "datasets", "data")


def open_set(name: str, split: int, limit: int | None = None) -> dict:
    """One split: training series of the known classes, test series known and
    unknown; labels 0..K-1 in the order of the sorted known class names."""
    stem, unknown_count, _ = DATASETS[name]
    x_train, y_train = read_ts(os.path.join(data_dir(), name, f"{stem}_TRAIN.ts"))
    x_test, y_test = read_ts(os.path.join(data_dir(), name, f"{stem}_TEST.ts"))
    classes = np.unique(y_train)
    unknown = set(np.random.default_rng(split).permutation(classes)[:unknown_count])
    known = [c for c in classes if c not in unknown]
    index = {c: i for i, c in enumerate(known)}
    keep, seen = np.isin(y_train, known), np.isin(y_test, known)
    # Statistics of the known training series only: the unknown classes are never seen.
    mean, std = x_train[keep].mean(axis=(0, 1)), x_train[keep].std(axis=(0, 1)) + 1e-8

    def part(x, y=None):  # standardised; ``limit`` series drawn at random (the files are sorted)
        pick = np.sort(np.random.default_rng(0).permutation(len(x))[:limit])
        x = ((x[pick] - mean) / std).astype(np.float32)
        return x if y is None else (x, np.array([index[c] for c in y[pick]]))

    return {"train": part(x_train[keep], y_train[keep]), "known_test": part(x_test[seen], y_test[seen]),
            "unknown_test": part(x_test[~seen]), "known": known, "unknown": sorted(unknown)}


def fcn(input_shape, classes: int, seed: int) -> keras.Model:
    """Wang et al.'s FCN: Conv1D-BN-ReLU x 3 (``block1``..``block3``), GAP
    (``features``), Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = inputs
    for i, (filters, kernel) in enumerate(((64, 8), (128, 5), (64, 3)), start=1):
        x = keras.layers.Conv1D(filters, kernel, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu", name=f"block{i}")(x)
    features = keras.layers.GlobalAveragePooling1D(name="features")(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(features), name="fcn")


def run_one(data, cell, split, seed, epochs, batch_size=32) -> dict:
    x, y = data["train"]
    classes = int(y.max()) + 1
    model = fcn(x.shape[1:], classes, seed)
    steps = int(np.ceil(len(x) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=epochs * steps)
    trainer = model
    if CELLS[cell] is not None:
        value_range = (float(x.min()), float(x.max()))
        trainer = GradMixModel(model, seed=seed, value_range=value_range, **GRADMIX, **CELLS[cell])
    trainer.compile(optimizer=keras.optimizers.Adam(schedule),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    history = trainer.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0).history
    seconds = time.perf_counter() - start
    results = evaluate_model_open_set(model, data["known_test"], data["unknown_test"], ("mls", "knn"),
                                      feature_layer="features", train_data=(x, y),
                                      score_options={"knn": {"k": 1}})
    return {"cell": cell, "options": CELLS[cell], "split": split, "seed": seed, "epochs": epochs,
            "train_series": len(x), "known": data["known"], "unknown": data["unknown"],
            "train_seconds": seconds, "results": results,
            "final_loss": float(history["loss"][-1]),
            "masking": {k: [float(v) for v in vals] for k, vals in history.items() if k.startswith("gradmix_")}}


def summarise(runs, names, datasets) -> tuple[str, dict]:
    rows = [{"dataset": r["dataset"], "cell": r["cell"], "pair": f"{r['dataset']}/{r['split']}/{r['seed']}",
             **{key: 100 * r["results"][key.split("/")[0]][key.split("/")[1]] for key in METRICS.values()}}
            for r in runs]
    tables, summary = [], {}
    for scope in [*datasets, "all"]:
        own = [r for r in rows if scope == "all" or r["dataset"] == scope]
        if not own:
            continue
        table, compared = [], list(METRICS.items())[:3]
        diffs = {key: {x["cell"]: x for x in paired_differences(own, key, "plain", by="cell", pair=("pair",))}
                 for _, key in compared}  # once per metric, not per cell
        for cell in names:
            mine = [r for r in own if r["cell"] == cell]
            if not mine:
                continue
            row = {"cell": cell, "runs": len(mine)}
            for label, key in METRICS.items():
                row[label] = f"{np.mean([r[key] for r in mine]):.2f}"
            for label, key in compared:
                row[f"Δ{label} vs plain"] = "–" if cell == "plain" else paired_text(diffs[key].get(cell))
            table.append(row)
        contrasts = []
        for cell, base, label in (("gradmix", "gradmix-random", "peak − random (positives)"),
                                  ("outlier-peak", "outlier-random", "peak − random (outliers)")):
            pair = [r for r in own if r["cell"] in (cell, base)]
            c = {"contrast": label}
            for metric, key in list(METRICS.items())[:3]:
                d = {x["cell"]: x for x in paired_differences(pair, key, base, by="cell", pair=("pair",))}
                c[f"Δ{metric}"] = paired_text(d.get(cell))
            contrasts.append(c)
        summary[scope] = {"cells": table, "contrasts": contrasts}
        tables += [f"## {scope}", "", to_markdown(table), "", to_markdown(contrasts), ""]
    return "\n".join(tables), {"rows": rows, "tables": summary}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--splits", default="0,1,2,3,4")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--epochs", type=int, default=None, help="default: each dataset's")
    parser.add_argument("--out", default=os.path.join("docs", "results", "timeseries"))
    parser.add_argument("--summary", default=os.path.join("docs", "results", "timeseries.md"))
    parser.add_argument("--finished-only", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="JapaneseVowels, 2 epochs, 64 series per set (for tests)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    limit = None
    if args.smoke:
        args.datasets, args.epochs, limit = "JapaneseVowels", 2, 64
    datasets, names = args.datasets.split(","), args.cells.split(",")
    if names[0] != "plain" or any(n not in CELLS for n in names) or any(d not in DATASETS for d in datasets):
        parser.error(f"--cells start with 'plain', from {list(CELLS)}; --datasets from {list(DATASETS)}")
    splits, seeds = [int(s) for s in args.splits.split(",")], [int(s) for s in args.seeds.split(",")]
    runs = []
    for name in datasets:
        epochs = args.epochs or DATASETS[name][2]
        for split in splits:
            data = None
            for seed in seeds:
                for cell in names:
                    path = os.path.join(args.out, f"{name}_{cell}_split{split}_seed{seed}.json")
                    if args.finished_only and not os.path.exists(path):
                        continue
                    if data is None and not os.path.exists(path):
                        data = open_set(name, split, limit)
                    run = cached_run(path, epochs, f"{name} {cell} split {split} seed {seed}",
                                     lambda: run_one(data, cell, split, seed, epochs))
                    runs.append({**run, "dataset": name})
    text, summary = summarise(runs, names, datasets)
    wanted = len(datasets) * len(splits) * len(seeds) * len(names)
    meta = {"command": " ".join(["python benchmarks/timeseries.py", *sys.argv[1:]]) if argv is None
            else " ".join(["python benchmarks/timeseries.py", *argv]),
            "datasets": {d: DATASETS[d] for d in datasets}, "splits": splits, "seeds": seeds,
            "gradmix": {k: list(v) if isinstance(v, tuple) else v for k, v in GRADMIX.items()},
            "runs": len(runs), "wanted": wanted, "keras": keras.__version__,
            "backend": keras.backend.backend(), "machine": machine()}
    progress = f" **Finished runs only: {len(runs)} of {wanted}.**" if len(runs) < wanted else ""
    page = "\n".join([
        "# Open-set recognition on time series: GradMix over time", "",
        f"UCR/UEA sets from the aeon wheel; each split holds out a random third of the classes "
        f"as unknowns. Wang et al.'s FCN, Adam 1e-3 cosine to 0, batch 32, epochs per dataset "
        f"{ {d: args.epochs or DATASETS[d][2] for d in datasets} }. GradMix: {meta['gradmix']}, "
        f"paired, spans shifted inside the series (area-exact). Splits {splits} x seeds {seeds}. "
        f"Means (%) over runs; Δ = per-pair difference on the same dataset, split and seed: mean, "
        f"95 % t-interval, (pairs where the first is higher / pairs).{progress}", "",
        text, f"Command: `{meta['command']}`  ",
        f"Keras {meta['keras']} ({meta['backend']}); {meta['machine']}.", ""])
    os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
    with open(args.summary, "w") as f:
        f.write(page)
    with open(os.path.splitext(args.summary)[0] + ".json", "w") as f:
        json.dump({"meta": meta, **summary}, f, indent=1)
    print(page)
    return runs, summary


if __name__ == "__main__":
    main()
