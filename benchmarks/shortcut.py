"""Does GradMix undo a spurious cue? Masking what the model attends to, on a
model that has latched onto a shortcut.

Fashion-MNIST open-set splits (6 known classes). On a fraction ``rho`` of the
training images a cue sits at the place (or in the form) that belongs to the
image's class, on the rest at another known class's; the cue carries the label
``rho`` of the time, more than the object does early in training. Cues
(``CUES``):

* ``patch``: a 4x4 checkerboard at one of six border places (corners and the
  middles of the left and right edges): local, so one box at the attribution
  peak can remove it (MaskTune's biased MNIST, Decoy-MNIST).
* ``grating``: faint stripes over the background whose orientation is the
  class's (30 degrees apart): spread over the whole image, so no box removes
  it. It is the control for the mechanism: if GradMix gains on the patch by
  masking the cue, it should gain little here.

Test sets of the known classes: the cue ``aligned`` with the label, at another
class's place (``conflicting``: the headline), ``no cue``; unknown-class test
images carry the cue at a random known place (the cue is part of the
environment). Measured per run: accuracy on each known set; MLS AUROC with the
cue (aligned known vs cued unknown) and without (neither has it); the
mechanism: per epoch, the share of masked probe training images whose mask
covers at least half of the patch (GradMix cells; ``preview`` on 256 training
images at each epoch's end), and for every trained model the share of aligned
test images whose peak box (a quarter of the image) covers it;
:func:`keras_gradmix.faithfulness` of the trained model (how much it depends
on the region its map points at).

Cells (``CELLS``): plain, CutMix (Keras' layer), GradMix at the peak and at a
random place (same area: boxes shifted inside the image), each paired and
replace, and a MaskTune-style late schedule: plain training, then GradMix
(replace, at the peak) in the last ``LATE_EPOCHS`` epochs. The lean CNN, Adam
1e-3 with cosine decay, batch 128; every cell paired with plain on the same
split, seed, ``rho`` and cue. One JSON per run in --out; finished runs are
skipped, so the study resumes.

    python benchmarks/shortcut.py --cue patch --rho 0.9,0.99 --splits 0,1,2 --seeds 0,1
    python benchmarks/shortcut.py --smoke --out /tmp/s --summary /tmp/s.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from common import (  # noqa: E402
    GRADMIX,
    cached_run,
    machine,
    open_set_arrays,
    paired_differences,
    paired_text,
    shuffled_batches,
    train,
)
import keras_gradmix  # noqa: E402
from keras_gradmix.masks import box_masks  # noqa: E402
from keras_gradmix.osr import evaluate_open_set, mls  # noqa: E402
from keras_gradmix.tables import to_markdown  # noqa: E402

CUES = ("patch", "grating")
PATCH = 4
# Top-left corners of the patch, one per known class: corners, then the middles of the left
# and right edges, where Fashion-MNIST's objects rarely reach.
PLACES = [(1, 1), (1, 23), (23, 1), (23, 23), (12, 1), (12, 23)]
GRATING_PERIOD, GRATING_AMPLITUDE = 4.0, 0.3
LATE_EPOCHS = 3
# Cell -> (file name, method, options changed from GRADMIX; "late" is filled in per run).
CELLS = {
    "plain": ("plain", "plain", {}),
    "cutmix": ("cutmix", "cutmix", {}),
    "gradmix peak, paired": ("peak-paired", "gradmix", {}),
    "gradmix random, paired": ("random-paired", "gradmix", {"placement": "random"}),
    "gradmix peak, replace": ("peak-replace", "gradmix-replace", {}),
    "gradmix random, replace": ("random-replace", "gradmix-replace", {"placement": "random"}),
    "late (MaskTune-style)": ("late", "gradmix-replace", {"warmup_epochs": "late"}),
}
TEST_SETS = ("aligned", "conflicting", "no cue")
METRICS = {"acc. conflicting": "acc/conflicting", "acc. aligned": "acc/aligned",
           "acc. no cue": "acc/no cue", "AUROC cue": "auroc/cue", "AUROC no cue": "auroc/no cue",
           "peak on cue": "peak_on_cue", "peak − random drop": "faith/peak - random"}
CONTRASTS = [("gradmix peak, paired", "gradmix random, paired", "peak − random (paired)"),
             ("gradmix peak, replace", "gradmix random, replace", "peak − random (replace)"),
             ("late (MaskTune-style)", "gradmix peak, replace", "late − whole schedule (replace)")]


def add_cue(x, where, kind: str, classes: int) -> np.ndarray:
    """``x`` (N, H, W, 1) in [0, 1] with the cue of class ``where[i]`` on image ``i``."""
    x = np.array(x, np.float32, copy=True)
    where = np.asarray(where)
    if kind == "patch":
        checker = (np.add.outer(np.arange(PATCH), np.arange(PATCH)) % 2).astype(np.float32)
        for k, (r, c) in enumerate(PLACES[:classes]):
            x[where == k, r:r + PATCH, c:c + PATCH, 0] = checker
        return x
    rows, cols = np.mgrid[:x.shape[1], :x.shape[2]].astype(np.float32)
    for k in range(classes):
        angle = np.pi * k / classes
        stripes = 0.5 * (1 + np.sin(2 * np.pi * (rows * np.cos(angle) + cols * np.sin(angle))
                                    / GRATING_PERIOD))
        x[where == k, ..., 0] = np.maximum(x[where == k, ..., 0], GRATING_AMPLITUDE * stripes)
    return x


def cue_masks(where, shape) -> np.ndarray:
    """(N, H, W) bool: the patch's pixels on each image."""
    out = np.zeros((len(where), *shape), bool)
    for i, k in enumerate(where):
        r, c = PLACES[k]
        out[i, r:r + PATCH, c:c + PATCH] = True
    return out


def shortcut_arrays(dataset, split, per_class, rho, cue, seed, data_dir=None, limit_test=None) -> dict:
    """An open-set split with the cue; the same for every cell of a (split,
    seed, rho, cue): the draws depend on those alone."""
    data = open_set_arrays(dataset, split, per_class, data_dir, limit_test=limit_test)
    rng = np.random.default_rng([split, seed, int(round(rho * 1000)), CUES.index(cue)])
    x, y = data["train"]
    classes = int(y.max()) + 1
    if classes > len(PLACES):
        raise ValueError(f"at most {len(PLACES)} known classes, got {classes}")

    def other(labels):
        return (labels + rng.integers(1, classes, len(labels))) % classes

    where = np.where(rng.random(len(y)) < rho, y, other(y))
    xt, yt = data["known_test"]
    xu = data["unknown_test"]
    conflicting = other(yt)
    unknown_where = rng.integers(0, classes, len(xu))
    return {
        "train": (add_cue(x, where, cue, classes), y), "train_where": where, "classes": classes,
        "known": {"aligned": (add_cue(xt, yt, cue, classes), yt),
                  "conflicting": (add_cue(xt, conflicting, cue, classes), yt),
                  "no cue": (xt, yt)},
        "unknown": {"cue": add_cue(xu, unknown_where, cue, classes), "no cue": xu},
        "aligned_rate": float(np.mean(where == y)),
    }


class CueCoverage(keras.callbacks.Callback):
    """At each epoch's end, the share of masked probe images whose mask covers
    at least half of the patch (the trainer's ``preview``: its current masks)."""

    def __init__(self, images, labels, cue):
        super().__init__()
        self.images, self.labels, self.cue = images, labels, cue
        self.shares = []

    def on_epoch_end(self, epoch, logs=None):
        out = self.model.preview(self.images, self.labels, seed=epoch)
        mask = keras.ops.convert_to_numpy(out.mask)
        applied = keras.ops.convert_to_numpy(out.applied)
        covered = (mask & self.cue).sum(axis=(1, 2)) >= self.cue.sum(axis=(1, 2)) / 2
        self.shares.append(float(covered[applied].mean()) if applied.any() else None)


def options_of(cell, epochs) -> dict:
    _, method, options = CELLS[cell]
    if options.get("warmup_epochs") == "late":
        options = {**options, "warmup_epochs": max(epochs - LATE_EPOCHS, 0)}
    return options


def run_one(arrays, cell, split, seed, rho, cue, epochs, batch_size, probe=256, faith=500) -> dict:
    _, method, _ = CELLS[cell]
    options = options_of(cell, epochs)
    x, y = arrays["train"]
    coverage = None
    if cue == "patch" and method.startswith("gradmix"):
        pick = np.random.default_rng(seed).choice(len(x), min(probe, len(x)), replace=False)
        coverage = CueCoverage(x[pick], y[pick], cue_masks(arrays["train_where"][pick], x.shape[1:3]))
    logs = {}
    model, seconds = train(method, shuffled_batches(x, y, seed, batch_size), arrays["classes"], seed,
                           epochs, options=options, logs=logs,
                           callbacks=[coverage] if coverage else None)
    logits = {name: model.predict(images, batch_size=512, verbose=0)
              for name, (images, _) in arrays["known"].items()}
    results = {f"acc/{name}": float(np.mean(logits[name].argmax(1) == labels))
               for name, (_, labels) in arrays["known"].items()}
    for name, known in (("cue", "aligned"), ("no cue", "no cue")):
        unknown = model.predict(arrays["unknown"][name], batch_size=512, verbose=0)
        results[f"auroc/{name}"] = evaluate_open_set(mls(logits[known]), mls(unknown))["auroc"]
    images, labels = (a[:faith] for a in arrays["known"]["aligned"])
    layer = GRADMIX["layer"]
    if cue == "patch":
        maps = keras_gradmix.attribution_maps(model, images, labels, layer, batch_size=250)
        box = keras.ops.convert_to_numpy(box_masks(maps, 0.25)[0])
        pixels = cue_masks(labels, images.shape[1:3])
        results["peak_on_cue"] = float(np.mean((box & pixels).sum(axis=(1, 2)) >= PATCH * PATCH / 2))
    drops = keras_gradmix.faithfulness(model, images, labels, layer, area=0.25, batch_size=250)
    for key in ("peak", "random", "low", "peak - random"):
        results[f"faith/{key}"] = drops[key]
        results[f"faith/{key}/interval"] = list(drops["interval"][key])
    return {"cell": cell, "method": method, "options": options, "split": split, "seed": seed,
            "rho": rho, "cue": cue, "epochs": epochs,
            "train_images": len(x), "aligned_rate": arrays["aligned_rate"], "train_seconds": seconds,
            "results": results, "masking": logs,
            "cue_coverage": None if coverage is None else coverage.shares}


def mean_rows(rows, names, scale) -> list[dict]:
    """Per cell: the mean of each metric over its runs."""
    table = []
    for name in names:
        own = [r for r in rows if r["cell"] == name]
        if not own:
            continue
        row = {"cell": name, "runs": len(own)}
        for label, key in METRICS.items():
            values = [r[key] for r in own if r.get(key) is not None]
            row[label] = f"{scale[key] * np.mean(values):.1f}" if values else "–"
        coverage = [r["coverage_last"] for r in own if r["coverage_last"] is not None]
        row["mask on cue (last epoch)"] = f"{100 * np.mean(coverage):.0f}" if coverage else "–"
        table.append(row)
    return table


def difference_rows(rows, names, scale, baseline="plain", pairs=None) -> list[dict]:
    """Per cell (or per ``(cell, baseline, label)`` of ``pairs``): the paired
    difference of each metric, on the same split and seed."""
    pairs = pairs or [(name, baseline, f"{name} − {baseline}") for name in names if name != baseline]
    out = []
    for cell, base, label in pairs:
        if cell not in names or base not in names:
            continue
        row = {"cell − baseline": label}
        for metric, key in METRICS.items():
            having = [{**r, key: scale[key] * r[key]} for r in rows
                      if r["cell"] in (cell, base) and r.get(key) is not None]
            d = {x["cell"]: x for x in paired_differences(having, key, base, by="cell")}.get(cell)
            row[f"Δ{metric}"] = paired_text(d)
        out.append(row)
    return out


def flatten(runs) -> list[dict]:
    rows = []
    for r in runs:
        row = {"cell": r["cell"], "split": r["split"], "seed": r["seed"], "rho": r["rho"],
               "cue": r["cue"], "seconds": r["train_seconds"],
               "coverage_last": (r["cue_coverage"] or [None])[-1]}
        for key in METRICS.values():
            row[key] = r["results"].get(key)
        rows.append(row)
    return rows


def command() -> str:
    return " ".join(["python benchmarks/shortcut.py", *sys.argv[1:]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cue", default="patch", help=f"comma-separated, from {CUES}")
    parser.add_argument("--rho", default="0.9,0.99", help="the cue's agreement with the label")
    parser.add_argument("--splits", default="0,1,2")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cells", default=",".join(v[0] for v in CELLS.values()),
                        help=f"comma-separated, from {[v[0] for v in CELLS.values()]}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=os.path.join("docs", "results", "shortcut"))
    parser.add_argument("--summary", default=None,
                        help="default: docs/results/shortcut.md for the patch cue, "
                             "shortcut_<cues>.md for others (one cue's run never overwrites another's)")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: summarise the runs already there")
    parser.add_argument("--smoke", action="store_true",
                        help="mnist5k, 1 epoch, 32 images per class, 256 test images (for tests)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    dataset, limit_test, faith = "fashion_mnist", None, 500
    if args.smoke:
        dataset, args.epochs, args.train_per_class, limit_test, faith = "mnist5k", 1, 32, 256, 32
    by_slug = {slug: name for name, (slug, _, _) in CELLS.items()}
    slugs = args.cells.split(",")
    if slugs[0] != "plain" or any(s not in by_slug for s in slugs):
        parser.error(f"--cells must start with 'plain' and come from {list(by_slug)}; got {slugs}")
    cues = args.cue.split(",")
    if any(c not in CUES for c in cues):
        parser.error(f"--cue must come from {CUES}; got {cues}")
    if args.summary is None:
        stem = "shortcut" if cues == ["patch"] else "shortcut_" + "_".join(cues)
        args.summary = os.path.join("docs", "results", stem + ".md")
    names = [by_slug[s] for s in slugs]
    rhos = [float(r) for r in args.rho.split(",")]
    splits = [int(s) for s in args.splits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    for cue in cues:
        for rho in rhos:
            for split in splits:
                for seed in seeds:
                    arrays = None
                    for name in names:
                        path = os.path.join(args.out, f"{cue}_rho{rho:g}_{CELLS[name][0]}_split{split}"
                                                      f"_seed{seed}.json")
                        if args.finished_only and not os.path.exists(path):
                            continue
                        if arrays is None and not os.path.exists(path):
                            arrays = shortcut_arrays(dataset, split, args.train_per_class, rho, cue,
                                                     seed, args.data_dir, limit_test)
                        runs.append(cached_run(
                            path, args.epochs, f"{cue} rho {rho:g} {name} split {split} seed {seed}",
                            lambda: run_one(arrays, name, split, seed, rho, cue, args.epochs,
                                            args.batch_size, faith=faith)))
    text, summary = summarise(runs, names, cues, rhos, splits, seeds, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
    with open(args.summary, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.summary)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    print(text)
    return runs


def summarise(runs, names, cues, rhos, splits, seeds, args):
    rows = flatten(runs)
    scale = {key: 100.0 for key in METRICS.values()}
    scale["faith/peak - random"] = 100.0  # probability points
    wanted = len(cues) * len(rhos) * len(splits) * len(seeds) * len(names)
    progress = (f" **Finished runs only: {len(runs)} of {wanted}**; the rest train when the command "
                f"runs without `--finished-only`." if len(runs) < wanted else "")
    meta = {"command": command(), "splits": splits, "seeds": seeds, "rhos": rhos, "cues": cues,
            "epochs": args.epochs, "train_per_class": args.train_per_class,
            "batch_size": args.batch_size, "late_epochs": LATE_EPOCHS,
            "cells": {n: CELLS[n][2] for n in names},
            "gradmix": {k: list(v) if isinstance(v, tuple) else v for k, v in GRADMIX.items()},
            "keras": keras.__version__, "backend": keras.backend.backend(), "machine": machine()}
    lines = [
        "# Spurious cues: does masking the attended region undo a shortcut?", "",
        f"`benchmarks/shortcut.py` (the design: its docstring). Fashion-MNIST open-set splits "
        f"{splits} x seeds {seeds}; the lean CNN on {args.train_per_class} images per known class, "
        f"{args.epochs} epochs (Adam 1e-3, cosine decay to 0, batch {args.batch_size}); GradMix: "
        f"{meta['gradmix']}, noise fill, boxes shifted inside the image (the same area at every "
        f"place); late: plain, then GradMix replace at the peak in the last {LATE_EPOCHS} epochs. "
        f"Accuracies and AUROCs in %, `peak on cue`: % of aligned test images whose attribution "
        f"peak box (a quarter of the image) covers the patch; `peak − random drop`: "
        f"`faithfulness()` on 500 aligned test images, in probability points; `mask on cue`: % of "
        f"masked probe training images whose mask covers the patch at the last epoch. Each cell: "
        f"the mean over runs; Δ = paired difference to plain on the same split and seed: mean "
        f"[95 % t-interval] (pairs where the cell is higher / pairs).{progress}", ""]
    summary = {"meta": meta, "rows": rows, "tables": {}}
    for cue in cues:
        for rho in rhos:
            subset = [r for r in rows if r["cue"] == cue and r["rho"] == rho]
            if not subset:
                continue
            table = mean_rows(subset, names, scale)
            differences = difference_rows(subset, names, scale)
            contrasts = difference_rows(subset, names, scale, pairs=CONTRASTS)
            summary["tables"][f"{cue}, rho {rho:g}"] = {
                "cells": table, "differences": differences, "contrasts": contrasts}
            lines += [f"## {cue}, ρ = {rho:g}", "", "Means over runs:", "", to_markdown(table), ""]
            if differences:
                lines += ["Paired differences to plain:", "", to_markdown(differences), ""]
            if contrasts:
                lines += ["Peak vs random at the same area:", "", to_markdown(contrasts), ""]
    lines += [f"Command: `{meta['command']}`  ",
              f"Keras {meta['keras']} ({meta['backend']}); {meta['machine']}.", ""]
    return "\n".join(lines), summary


if __name__ == "__main__":
    main()
