"""Does the attribution matter? GradMix against the same mask at a random place,
with masked images used as positives (the paper) or as outliers.

The sensitivity study's converged regime: Fashion-MNIST open-set splits, the
lean CNN (``keras_gradmix.zoo.lean_cnn``) trained with cross-entropy for 40
epochs (Adam 1e-3, cosine decay to 0, batch 128) on 2,000 images per known
class, scored on every known- and unknown-class test image with the max logit
(MLS) and Sun et al.'s kNN on the GAP features. Cells (``CELLS``) change one
thing of the paper's configuration (``common.GRADMIX``):
``placement`` (``"peak"``, ``"random"``, ``"low"``) and ``masked_as``
(``"positive"``, ``"outlier"``: trained toward the uniform distribution with
``outlier_weight`` 0.5). Every run is paired with plain on the same split and
seed; the contrasts that answer the question (peak vs random, outlier vs
positive) are paired the same way.

One JSON per run lands in --out; finished runs are skipped, so a study resumes
on another machine from the committed files. The sensitivity study's plain and
paper-configuration runs (same regime, same code path: ``placement="peak"`` is
bit for bit the old step) are reused from --reuse; they have no kNN score, so
the kNN columns count fewer pairs.

    python benchmarks/attribution_control.py --splits 0,1,2,3,4 --seeds 0,1
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
import tensorflow as tf  # noqa: E402

from common import (  # noqa: E402
    GRADMIX,
    cached_run,
    machine,
    open_set_arrays,
    paired_differences,
    paired_text,
    train_and_score,
)
from keras_gradmix.masks import BORDERS, PLACEMENTS  # noqa: E402
from keras_gradmix.tables import to_markdown  # noqa: E402

# Cell -> (file name, method, options changed from GRADMIX).
CELLS = {
    "plain": ("plain", "plain", {}),
    "gradmix": ("gradmix", "gradmix", {}),
    "gradmix, random placement": ("gradmix-random", "gradmix", {"placement": "random"}),
    "outlier, peak": ("outlier-peak", "gradmix", {"masked_as": "outlier"}),
    "outlier, random placement": ("outlier-random", "gradmix",
                                  {"masked_as": "outlier", "placement": "random"}),
    "outlier, low": ("outlier-low", "gradmix", {"masked_as": "outlier", "placement": "low"}),
}
DEFAULT_CELLS = list(CELLS)[:5]
# The two questions, as (cell, baseline) pairs compared on the same split and seed.
CONTRASTS = [("gradmix", "gradmix, random placement", "peak vs random (positives)"),
             ("outlier, peak", "outlier, random placement", "peak vs random (outliers)"),
             ("outlier, peak", "gradmix", "outlier vs positive (peak)"),
             ("outlier, random placement", "gradmix, random placement", "outlier vs positive (random)"),
             ("outlier, peak", "outlier, low", "peak vs low (outliers)")]
METRICS = {"accuracy": "mls/accuracy", "AUROC (MLS)": "mls/auroc", "OSCR (MLS)": "mls/oscr",
           "AUROC (kNN)": "knn/auroc"}
SCORES = ("mls", "msp", "knn")


def masked_share(model, data, images: int = 1000) -> dict:
    """The mean share of an image masked on the first ``images`` known test
    images by the trained model's GradMix boxes (the study's areas, one per
    image), per border and placement: what clipping costs at each place."""
    from keras_gradmix import GradMixModel

    x, y = (a[:images] for a in data["known_test"])
    share = {}
    for border in BORDERS:
        for placement in PLACEMENTS:
            gm = GradMixModel(model, **{**GRADMIX, "area_sampling": "sample", "border": border,
                                        "placement": placement})
            areas, applied = [], []
            for start in range(0, len(x), 250):
                out = gm.preview(x[start:start + 250], y[start:start + 250], seed=start)
                areas.append(keras.ops.convert_to_numpy(out.area))
                applied.append(keras.ops.convert_to_numpy(out.applied))
            areas, applied = np.concatenate(areas), np.concatenate(applied)
            share[f"{border}/{placement}"] = float(areas[applied].mean())
    return share


def run_one(data, cell, split, seed, epochs, batch_size, border) -> dict:
    _, method, options = CELLS[cell]
    if method == "gradmix":
        options = {**options, "border": border}
    logs = {}
    results, seconds = train_and_score(data, method, options, seed, epochs, batch_size, SCORES,
                                       feature_layer="features", logs=logs,
                                       after=masked_share if method == "gradmix" else None)
    return {"cell": cell, "method": method, "options": options, "split": split, "seed": seed,
            "epochs": epochs, "train_images": len(data["train"][0]), "train_seconds": seconds,
            "results": results, "masking": logs}


def reused(reuse_dirs, cell, split, seed, epochs, train_images, border):
    """An earlier study's run of the same cell, split and seed in the same
    regime, if one exists: plain (no mask) from any, the paper's
    configuration (``gradmix``) only for ``border="clip"`` (the earlier
    studies' boxes)."""
    if cell not in (("plain", "gradmix") if border == "clip" else ("plain",)):
        return None
    for reuse_dir in filter(None, reuse_dirs):
        path = os.path.join(reuse_dir, f"{CELLS[cell][0]}_split{split}_seed{seed}.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            run = json.load(f)
        if run["epochs"] == epochs and run["train_images"] == train_images and not run["options"]:
            print(f"reuse {path}")
            return {**run, "cell": cell, "reused_from": path}
    return None


def flatten(runs) -> list[dict]:
    """One row per run: cell, split, seed, seconds and each metric in % (None if not scored)."""
    rows = []
    for r in runs:
        row = {"cell": r["cell"], "split": r["split"], "seed": r["seed"], "seconds": r["train_seconds"]}
        for key in METRICS.values():
            score, metric = key.split("/")
            value = r["results"].get(score, {}).get(metric)
            row[key] = None if value is None else 100 * value
        rows.append(row)
    return rows


def differences(rows, key, baseline):
    """:func:`paired_differences` over the rows that have ``key``."""
    having = [r for r in rows if r[key] is not None]
    return {d["cell"]: d for d in paired_differences(having, key, baseline, by="cell")}


def mean_std_of(rows, key) -> str:
    values = [r[key] for r in rows if r[key] is not None]
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}" if values else "–"


def cell_table(rows, names) -> str:
    diffs = {key: differences(rows, key, "plain") for key in METRICS.values()}
    table = []
    for name in names:
        own = [r for r in rows if r["cell"] == name]
        if not own:
            continue
        row = {"cell": name, "runs": len(own)}
        row.update({label: mean_std_of(own, key) for label, key in METRICS.items()})
        for label, key in METRICS.items():
            row[f"Δ{label} vs plain"] = "–" if name == "plain" else paired_text(diffs[key].get(name))
        row["train s / run"] = f"{np.median([r['seconds'] for r in own]):.0f}"
        table.append(row)
    return to_markdown(table)


def contrast_rows(rows, names) -> list[dict]:
    out = []
    for cell, baseline, label in CONTRASTS:
        if cell not in names or baseline not in names:
            continue
        pair = [r for r in rows if r["cell"] in (cell, baseline)]
        row = {"contrast": label, "cell − baseline": f"{cell} − {baseline}"}
        for metric, key in METRICS.items():
            row[f"Δ{metric}"] = paired_text(differences(pair, key, baseline).get(cell))
        out.append(row)
    return out


def per_split(rows, names) -> str:
    plain = {(r["split"], r["seed"]): r["mls/auroc"] for r in rows if r["cell"] == "plain"}
    splits = sorted({s for s, _ in plain})
    table = [{"cell": "plain (AUROC, MLS)", **{f"split {s}": ", ".join(
        f"{v:.1f}" for (sp, _), v in sorted(plain.items()) if sp == s) for s in splits}}]
    for name in names[1:]:
        row = {"cell": name}
        for s in splits:
            d = [r["mls/auroc"] - plain[(s, r["seed"])] for r in sorted(rows, key=lambda r: r["seed"])
                 if r["cell"] == name and r["split"] == s and (s, r["seed"]) in plain]
            row[f"split {s}"] = f"{np.mean(d):+.1f} ({', '.join(f'{v:+.1f}' for v in d)})" if d else "–"
        table.append(row)
    return to_markdown(table)


def plot(rows, names, path):
    """Paired differences (to plain, and the contrasts) with 95 % t-intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("mls/auroc", "AUROC (MLS)"), ("knn/auroc", "AUROC (kNN)"), ("mls/accuracy", "accuracy")]
    entries = [(name, "plain", f"{name} − plain") for name in names[1:]]
    entries += [(c, b, label) for c, b, label in CONTRASTS if c in names and b in names]
    figure = Figure(figsize=(11, 0.4 * len(entries) + 1.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), sharey=True)
    positions = np.arange(len(entries))[::-1]
    for ax, (key, title) in zip(axes, panels):
        for y, (cell, baseline, _) in zip(positions, entries):
            pair = [r for r in rows if r["cell"] in (cell, baseline)]
            d = differences(pair, key, baseline).get(cell)
            if d is None or d["diff"] is None:
                continue
            low = d["ci_low"] if d["ci_low"] is not None else d["diff"]
            high = d["ci_high"] if d["ci_high"] is not None else d["diff"]
            colour = "tab:blue" if baseline == "plain" else "tab:purple"
            ax.errorbar([d["diff"]], [y], xerr=[[d["diff"] - low], [high - d["diff"]]], fmt="o",
                        color=colour, ecolor="black", capsize=3)
        ax.axvline(0.0, color="tab:red", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("paired difference (points)", fontsize=8)
    axes[0].set_yticks(positions, [label for _, _, label in entries], fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def collect(args, names, splits, seeds, border, out, reuse_dirs, finished_only) -> list[dict]:
    """Every run of ``names`` x ``splits`` x ``seeds`` with ``border``: reused,
    stored in ``out``, or trained there (unless ``finished_only``)."""
    runs = []
    for split in splits:
        data = open_set_arrays(args.dataset, split, args.train_per_class, args.data_dir,
                               limit_test=256 if args.smoke else None)
        for seed in seeds:
            for name in names:
                run = reused(reuse_dirs, name, split, seed, args.epochs, len(data["train"][0]), border)
                path = os.path.join(out, f"{CELLS[name][0]}_split{split}_seed{seed}.json")
                if run is None and not (finished_only and not os.path.exists(path)):
                    run = cached_run(path, args.epochs, f"{name} split {split} seed {seed}",
                                     lambda: run_one(data, name, split, seed, args.epochs,
                                                     args.batch_size, border))
                if run is not None:
                    runs.append(run)
    return runs


def side_by_side(earlier, runs, names) -> list[dict]:
    """The differences to plain and the contrasts with clipped boxes (the first
    study) and shifted ones (the same area at every place), column by column."""
    entries = [(name, "plain", f"{name} − plain") for name in names[1:]]
    entries += [(c, b, label) for c, b, label in CONTRASTS if c in names and b in names]
    old, new = flatten(earlier), flatten(runs)
    out = []
    for cell, baseline, label in entries:
        row = {"contrast": label}
        for metric, key in (("AUROC (MLS)", "mls/auroc"), ("AUROC (kNN)", "knn/auroc"),
                            ("accuracy", "mls/accuracy")):
            for border, rows in (("clipped", old), ("shifted", new)):
                pair = [r for r in rows if r["cell"] in (cell, baseline)]
                row[f"Δ{metric}, {border}"] = paired_text(differences(pair, key, baseline).get(cell))
        out.append(row)
    return out


def share_rows(runs, names) -> list[dict]:
    """Per GradMix cell: the share of an image its boxes mask, measured on its
    trained models (1,000 known test images, the study's areas): shifted (as
    trained) and what clipping would mask at the same place; and ``gradmix_area``
    of the last training epoch."""
    out = []
    for name in names[1:]:
        own = [r for r in runs if r["cell"] == name and r.get("masking", {}).get("after")]
        if not own:
            continue
        place = CELLS[name][2].get("placement", "peak")
        out.append({"cell": name, "runs": len(own), "placement": place,
                    "share, shifted": f"{np.mean([r['masking']['after'][f'shift/{place}'] for r in own]):.3f}",
                    "share, clipped": f"{np.mean([r['masking']['after'][f'clip/{place}'] for r in own]):.3f}",
                    "gradmix_area (last epoch)":
                        f"{np.mean([r['masking']['gradmix_area'][-1] for r in own]):.3f}"})
    return out


BOXES = {"shift": "shifted inside the image near the border (`border='shift'`: the same area at "
                  "every place)",
         "clip": "clipped at the border (`border='clip'`, the first study)"}


def command() -> str:
    return " ".join(["python benchmarks/attribution_control.py", *sys.argv[1:]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist5k"])
    parser.add_argument("--splits", default="0,1,2,3,4")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train-per-class", type=int, default=2000, help="0: all")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cells", default=",".join(CELLS[n][0] for n in DEFAULT_CELLS),
                        help=f"comma-separated, from {[v[0] for v in CELLS.values()]}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--border", default="shift", choices=BORDERS,
                        help="GradMix's boxes: shifted inside the image (the same area at every "
                             "place) or clipped at the border (the first study)")
    parser.add_argument("--out", default=None,
                        help="per-run JSON (default: docs/results/attribution_control_exact for "
                             "--border shift, docs/results/attribution_control for clip)")
    parser.add_argument("--reuse", default=",".join(os.path.join("docs", "results", d) for d in
                                                    ("sensitivity", "attribution_control")),
                        help="comma-separated folders of earlier runs of this regime ('' for none)")
    parser.add_argument("--compare", default=os.path.join("docs", "results", "attribution_control"),
                        help="with --border shift: the clipped runs to set beside ('' for none)")
    parser.add_argument("--summary", default=os.path.join("docs", "results", "attribution_control.md"))
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: summarise the runs already there")
    parser.add_argument("--smoke", action="store_true",
                        help="mnist5k, 1 epoch, 32 images per class, 256 test images (for tests)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.smoke:
        args.dataset, args.epochs, args.train_per_class, args.reuse = "mnist5k", 1, 32, ""
        args.compare = args.compare if "--compare" in (argv or sys.argv) else ""
    results_dir = os.path.join("docs", "results")
    args.out = args.out or os.path.join(
        results_dir, "attribution_control" + ("_exact" if args.border == "shift" else ""))
    reuse_dirs = [d for d in args.reuse.split(",") if os.path.abspath(d) != os.path.abspath(args.out)]
    by_slug = {slug: name for name, (slug, _, _) in CELLS.items()}
    slugs = args.cells.split(",")
    if slugs[0] != "plain" or any(s not in by_slug for s in slugs):
        parser.error(f"--cells must start with 'plain' and come from {list(by_slug)}; got {slugs}")
    names = [by_slug[s] for s in slugs]
    splits = [int(s) for s in args.splits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = collect(args, names, splits, seeds, args.border, args.out, reuse_dirs, args.finished_only)
    earlier = None
    if args.border == "shift" and args.compare:  # the first study's clipped boxes, beside
        earlier = collect(args, names, splits, seeds, "clip", args.compare, reuse_dirs, True)
    rows = flatten(runs)
    wanted = len(splits) * len(seeds) * len(names)
    progress = (f" **Finished runs only: {len(runs)} of {wanted}**; the rest train when the command "
                f"runs without `--finished-only`." if len(runs) < wanted else "")
    meta = {"command": command(), "dataset": args.dataset, "splits": splits, "seeds": seeds,
            "epochs": args.epochs, "train_per_class": args.train_per_class,
            "batch_size": args.batch_size, "cells": {n: CELLS[n][2] for n in names},
            "gradmix": {k: list(v) if isinstance(v, tuple) else v for k, v in GRADMIX.items()},
            "reused": sorted(r["reused_from"] for r in runs if "reused_from" in r),
            "keras": keras.__version__, "tensorflow": tf.__version__, "machine": machine()}
    contrasts = contrast_rows(rows, names)
    compared = side_by_side(earlier, runs, names) if earlier else []
    shares = share_rows(runs, names)
    png = os.path.splitext(args.summary)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
    plot(rows, names, png)
    text = "\n".join([
        f"# Does the attribution matter? Placement and use of GradMix's mask ({args.dataset})", "",
        f"Splits {splits} x seeds {seeds}; the lean CNN trained with cross-entropy on "
        f"{args.train_per_class or 'all'} images per known class for {args.epochs} epochs (Adam "
        f"1e-3, cosine decay to 0, batch {args.batch_size}); every known- and unknown-class test "
        f"image scored with the max logit (MLS) and kNN (Sun et al., k = 50, on the GAP features). "
        f"GradMix: {meta['gradmix']}, noise fill, paired, label target; boxes "
        f"{BOXES[args.border]}. "
        f"`random placement` puts "
        f"the same box (same area asked, fill, label weights) at a uniformly random place; `outlier` "
        f"trains the masked images toward the uniform distribution over the known classes "
        f"(weight 0.5) instead of their label. Mean ± std (%) over runs (train time: the median); Δ = per-pair "
        f"difference on the same split and seed: mean, 95 % t-interval (df = pairs − 1), "
        f"(pairs where the first is higher / pairs). The plain and paper-configuration runs "
        f"of splits 0-1 x seeds 0-1 are the sensitivity study's, the other plain runs the first "
        f"placement study's ({len(meta['reused'])} reused; the sensitivity study's have no kNN "
        f"score, so the kNN columns have fewer pairs).{progress}", "",
        cell_table(rows, names), "",
        *(["**Clipped vs shifted boxes**: the first study (boxes clipped at the border, "
           f"`--border clip`, in {args.compare}) beside this one, the same differences:", "",
           to_markdown(compared), ""] if compared else []),
        *(["**The share of the image masked**, measured on each cell's trained models (1,000 "
           "known test images, one area per image from the study's range): with the boxes "
           "shifted inside the image (as trained: the same at every place) and what clipping "
           "would mask at the same places, and `gradmix_area` in the History:", "",
           to_markdown(shares), ""] if shares else []),
        "**The contrasts** (cell − baseline on the same split and seed):", "",
        to_markdown(contrasts) if contrasts else "(no pair yet)", "",
        "ΔAUROC (MLS) vs plain per split: the mean over seeds (each seed's difference); the "
        "first row is plain's own AUROC per seed.", "",
        per_split(rows, names), "",
        f"![Paired differences]({os.path.basename(png)})", "",
        f"Command: `{meta['command']}`  ",
        f"Keras {meta['keras']}, TensorFlow {meta['tensorflow']}; {meta['machine']}. Runs shared "
        f"the machine's two cores (two workers): train times are indicative.", ""])
    with open(args.summary, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.summary)[0] + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "contrasts": contrasts, "compared": compared,
                   "shares": shares}, f, indent=1)
    print(text)
    return runs


if __name__ == "__main__":
    main()
