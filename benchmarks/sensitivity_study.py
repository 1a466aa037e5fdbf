"""Where does GradMix help? One factor at a time from the paper's configuration.

Fashion-MNIST open-set splits, the lean CNN (``keras_gradmix.zoo.lean_cnn``)
trained with cross-entropy under one schedule (Adam 1e-3, cosine decay to 0,
batch 128) on ``--train-per-class`` images of each known class, then scored on
all known- and unknown-class test images (MLS, MSP). Cells: plain, CutMix and
MixUp (Keras' layers in tf.data), the paper's GradMix configuration
(``common.GRADMIX``: LayerCAM on the last two stages, noise
boxes of 10-50 % at the peak, paired, label target) and one change of it per
cell (``FACTORS``). Every run is paired with plain on the same split and seed:
the summary reports the per-pair difference (mean, 95 % t-interval, wins).

One JSON per run (cell x split x seed) lands in --out; finished runs are
skipped, so a study interrupted on one machine resumes on another from the
committed files. ``--probe`` instead trains plain at several epoch counts to
find where it has converged.

    python benchmarks/sensitivity_study.py --probe 10,20,40,60 --splits 0,1 --seeds 0
    python benchmarks/sensitivity_study.py --epochs 40 --splits 0,1 --seeds 0,1
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
    mean_std,
    open_set_arrays,
    paired_cells,
    paired_differences,
    train_and_score,
)
from keras_gradmix.tables import to_markdown  # noqa: E402

SCORES = ("mls", "msp")
METRICS = ("accuracy", "auroc", "oscr", "fpr95")
BASELINES = ("plain", "cutmix", "mixup")
PAPER = "gradmix"


def factors(epochs: int) -> dict[str, list[tuple[str, dict]]]:
    """Factor -> levels ``(label, options changed from GRADMIX)``; the first
    level of each factor is the paper's configuration."""
    return {
        "masked area": [("10-50 % (paper)", {}), ("5-25 %", {"mask_area": (0.05, 0.25)}),
                        ("30-70 %", {"mask_area": (0.3, 0.7)})],
        "warm-up": [("none (paper)", {}), (f"{epochs // 6} epochs (1/6)", {"warmup_epochs": epochs // 6}),
                    (f"{epochs // 3} epochs (1/3)", {"warmup_epochs": epochs // 3})],
        "masked share": [("all (paper)", {}), ("probability 0.5", {"probability": 0.5})],
        "attribution": [("layercam (paper)", {}), ("gradcam", {"attribution": "gradcam"}),
                        ("gradcam++", {"attribution": "gradcam++"})],
        "layers": [("last two stages (paper)", {}), ("last stage", {"layer": ["stage3"]})],
        "fill": [("noise (paper)", {}), ("mix (partner)", {"fill": "mix"}),
                 ("constant 0", {"fill": 0.0})],
        "target": [("label (paper)", {}), ("loss", {"target": "loss"})],
        "mode": [("paired (paper)", {}), ("replace", {"mode": "replace"})],
    }


def cells(epochs: int) -> dict[str, tuple[str, dict]]:
    """Cell name -> (method, GradMix options); the paper's configuration once."""
    out = {name: (name, {}) for name in BASELINES}
    out[PAPER] = ("gradmix", {})
    for factor, levels in factors(epochs).items():
        for label, options in levels[1:]:
            out[f"{factor}: {label}"] = ("gradmix", options)
    return out


def run_one(data, cell, method, options, split, seed, epochs, batch_size) -> dict:
    results, seconds = train_and_score(data, method, options, seed, epochs, batch_size, SCORES)
    return {"cell": cell, "method": method, "options": options, "split": split, "seed": seed,
            "epochs": epochs, "train_images": len(data["train"][0]), "train_seconds": seconds,
            "results": results}


def flatten(runs) -> list[dict]:
    """One row per run: cell, split, seed, seconds and ``score/metric`` in %."""
    return [{"cell": r["cell"], "split": r["split"], "seed": r["seed"], "seconds": r["train_seconds"],
             **{f"{s}/{m}": 100 * r["results"][s][m] for s in SCORES for m in METRICS}} for r in runs]


def fmt(row, key) -> str:
    return f"{row[key]:.2f} ± {row[key + '_std']:.2f}"


def ci(row) -> str:
    """The mean difference and its interval in one cell."""
    if row["diff"] is None:
        return "–"
    cells = paired_cells(row)
    return cells["mean difference"] + ("" if row["ci_low"] is None else f" {cells['95 % CI']}")


def summary_table(rows, names) -> str:
    stats = {r["cell"]: r for r in mean_std(rows, ["cell"], ["mls/accuracy", "mls/auroc", "mls/oscr",
                                                            "mls/fpr95", "msp/auroc", "seconds"])}
    diffs = {key: {d["cell"]: d for d in paired_differences(rows, key, "plain", by="cell")}
             for key in ("mls/auroc", "mls/accuracy", "mls/oscr")}
    table = []
    for name in names:
        if name not in stats:
            continue
        s = stats[name]
        row = {"cell": name, "runs": s["runs"], "accuracy": fmt(s, "mls/accuracy"),
               "AUROC (MLS)": fmt(s, "mls/auroc"), "OSCR (MLS)": fmt(s, "mls/oscr"),
               "FPR95 (MLS)": fmt(s, "mls/fpr95"), "AUROC (MSP)": fmt(s, "msp/auroc")}
        for key, label in (("mls/auroc", "ΔAUROC"), ("mls/accuracy", "Δaccuracy"), ("mls/oscr", "ΔOSCR")):
            d = diffs[key].get(name)
            row[f"{label} vs plain [95 % CI]"] = ci(d) if d else "–"
        auroc = diffs["mls/auroc"].get(name)
        row["AUROC wins / pairs"] = f"{auroc['wins']}/{auroc['pairs']}" if auroc else "–"
        row["train s / run"] = f"{s['seconds']:.0f}"
        table.append(row)
    return to_markdown(table)


def per_split_table(rows, names) -> str:
    """ΔAUROC (MLS) vs plain per split: the mean over seeds, then each seed's difference."""
    plain = {(r["split"], r["seed"]): r["mls/auroc"] for r in rows if r["cell"] == "plain"}
    splits = sorted({split for split, _ in plain})
    table = [{"cell": "plain (AUROC, MLS)", **{f"split {s}": ", ".join(
        f"{v:.1f}" for (split, _), v in sorted(plain.items()) if split == s) for s in splits}}]
    for name in names:
        if name == "plain":
            continue
        row = {"cell": name}
        for s in splits:
            diffs = [r["mls/auroc"] - plain[(s, r["seed"])] for r in sorted(rows, key=lambda r: r["seed"])
                     if r["cell"] == name and r["split"] == s and (s, r["seed"]) in plain]
            row[f"split {s}"] = (f"{np.mean(diffs):+.1f} ({', '.join(f'{d:+.1f}' for d in diffs)})"
                                 if diffs else "–")
        table.append(row)
    return to_markdown(table)


def plot(rows, epochs, path):
    """ΔAUROC (MLS) vs plain with 95 % t-intervals, one panel row per factor level."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    diffs = {d["cell"]: d for d in paired_differences(rows, "mls/auroc", "plain", by="cell")}
    labels, values, lows, highs, colours = [], [], [], [], []
    entries = [(name, name) for name in ("cutmix", "mixup")] + [(PAPER, "GradMix (paper configuration)")]
    for factor, levels in factors(epochs).items():
        entries += [(f"{factor}: {label}", f"{factor}: {label}") for label, _ in levels[1:]]
    for cell, label in entries:
        d = diffs.get(cell)
        if d is None or d["diff"] is None:
            continue
        labels.append(label)
        values.append(d["diff"])
        lows.append(d["diff"] - (d["ci_low"] if d["ci_low"] is not None else d["diff"]))
        highs.append((d["ci_high"] if d["ci_high"] is not None else d["diff"]) - d["diff"])
        colours.append("tab:grey" if cell in BASELINES else "tab:blue")
    figure = Figure(figsize=(7, 0.32 * len(labels) + 1.2), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    positions = np.arange(len(labels))[::-1]
    ax.errorbar(values, positions, xerr=[lows, highs], fmt="none", ecolor="black", capsize=3)
    ax.scatter(values, positions, c=colours, zorder=3)
    ax.axvline(0.0, color="tab:red", lw=1)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xlabel("AUROC (MLS) minus plain on the same split and seed\n(points; bars: 95 % t-interval)")
    figure.tight_layout()
    figure.savefig(path)


def probe(args, parser):
    """Plain at several epoch counts: where has it converged?"""
    rows = []
    for split in args.split_list:
        data = open_set_arrays(args.dataset, split, args.train_per_class, args.data_dir)
        for seed in args.seed_list:
            for epochs in [int(e) for e in args.probe.split(",")]:
                path = os.path.join(args.out, "probe", f"plain_{epochs}ep_split{split}_seed{seed}.json")
                run = cached_run(path, epochs, f"probe plain {epochs} epochs split {split} seed {seed}",
                                 lambda: run_one(data, "plain", "plain", {}, split, seed, epochs,
                                                 args.batch_size))
                rows.append({"epochs": epochs, **flatten([run])[0]})
    stats = mean_std(rows, ["epochs"], ["mls/accuracy", "mls/auroc", "mls/oscr", "seconds"])
    table = to_markdown([{"epochs": s["epochs"], "runs": s["runs"], "accuracy": fmt(s, "mls/accuracy"),
                          "AUROC (MLS)": fmt(s, "mls/auroc"), "OSCR (MLS)": fmt(s, "mls/oscr"),
                          "train s / run": f"{s['seconds']:.0f}"} for s in stats])
    text = "\n".join([
        f"# When has plain training converged? ({args.dataset}, {args.train_per_class or 'all'} "
        f"training images per known class)", "",
        "Plain training of the lean CNN, Adam 1e-3 with cosine decay to 0 over each epoch count, "
        f"batch {args.batch_size}; splits {args.split_list} x seeds {args.seed_list}; mean ± std (%).",
        "", table, "", f"Command: `{command()}`  ", f"Keras {keras.__version__}, TensorFlow "
        f"{tf.__version__}; {machine()}.", ""])
    path = os.path.join(os.path.dirname(args.summary), "sensitivity_convergence.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    return rows


def command() -> str:
    return " ".join(["python benchmarks/sensitivity_study.py", *sys.argv[1:]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist5k"])
    parser.add_argument("--splits", default="0,1")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train-per-class", type=int, default=2000, help="0: all")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    parser.add_argument("--probe", default=None, help="epoch counts: train plain only, at each")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=os.path.join("docs", "results", "sensitivity"),
                        help="folder of per-run JSON")
    parser.add_argument("--summary", default=os.path.join("docs", "results", "sensitivity.md"))
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: summarise the runs already in --out")
    parser.add_argument("--smoke", action="store_true",
                        help="mnist5k, 1 epoch, 32 images per class, 4 cells (for tests)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.smoke:
        args.dataset, args.epochs, args.train_per_class = "mnist5k", 1, 32
        args.cells = args.cells or f"plain,cutmix,{PAPER},masked area: 5-25 %"
    args.split_list = [int(s) for s in args.splits.split(",")]
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
    if args.probe:
        return probe(args, parser)

    all_cells = cells(args.epochs)
    names = list(all_cells) if args.cells is None else args.cells.split(",")
    unknown = [n for n in names if n not in all_cells]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {list(all_cells)}")
    runs = []
    for split in args.split_list:
        data = open_set_arrays(args.dataset, split, args.train_per_class, args.data_dir,
                               limit_test=256 if args.smoke else None)
        for seed in args.seed_list:
            for name in names:
                method, options = all_cells[name]
                slug = name.replace(": ", "_").replace(" ", "-").replace("%", "pc").replace("/", "of")
                path = os.path.join(args.out, f"{slug}_split{split}_seed{seed}.json")
                if args.finished_only and not os.path.exists(path):
                    continue
                runs.append(cached_run(path, args.epochs, f"{name} split {split} seed {seed}",
                                       lambda: run_one(data, name, method, options, split, seed,
                                                       args.epochs, args.batch_size)))
    rows = flatten(runs)
    wanted = len(args.split_list) * len(args.seed_list) * len(names)
    progress = (f" **Finished runs only: {len(runs)} of {wanted}**; the rest train when the "
                f"command runs without `--finished-only`." if len(runs) < wanted else "")
    meta = {"command": command(), "dataset": args.dataset, "splits": args.split_list,
            "seeds": args.seed_list, "epochs": args.epochs, "train_per_class": args.train_per_class,
            "batch_size": args.batch_size, "gradmix": {k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in GRADMIX.items()},
            "keras": keras.__version__, "tensorflow": tf.__version__, "machine": machine()}
    png = os.path.splitext(args.summary)[0] + ".png"
    plot(rows, args.epochs, png)
    text = "\n".join([
        f"# GradMix sensitivity on {args.dataset} open-set recognition", "",
        f"Splits {args.split_list} x seeds {args.seed_list}; the lean CNN trained with "
        f"cross-entropy on {args.train_per_class or 'all'} images per known class for "
        f"{args.epochs} epochs (Adam 1e-3, cosine decay to 0, batch {args.batch_size}), "
        f"evaluated on all known- and unknown-class test images. Paper configuration: "
        f"{meta['gradmix']}, noise fill, paired, label target, BatchNorm statistics from "
        f"the clean batch; every other GradMix row changes one option of it. Mean ± std (%) "
        f"over runs; Δ = the per-pair difference to plain on the same split and seed, mean "
        f"and 95 % t-interval over the pairs (df = pairs - 1), and the pairs where the cell "
        f"is higher. MLS = max logit; FPR95 lower is better.{progress}", "",
        summary_table(rows, names), "",
        "ΔAUROC (MLS) vs plain per split: the mean over seeds (each seed's difference, in seed "
        "order); the first row is plain's own AUROC per seed.", "",
        per_split_table(rows, names), "",
        f"![ΔAUROC vs plain]({os.path.basename(png)})", "",
        f"Command: `{meta['command']}`  ",
        f"Keras {meta['keras']}, TensorFlow {meta['tensorflow']}; {meta['machine']}. Runs "
        f"shared the machine's two cores with other work: train times are indicative.", ""])
    with open(args.summary, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.summary)[0] + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(text)
    return runs


if __name__ == "__main__":
    main()
