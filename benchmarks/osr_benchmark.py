"""Open-set benchmark: plain training vs CutMix, MixUp and GradMix on an OSR split.

Every method trains the same lean CNN with the same schedule (Adam, cosine
decay to 0, batch 128) on the known classes, then is scored on the known and
unknown test classes with MLS and MSP. CutMix and MixUp are Keras' built-in
layers applied in the tf.data pipeline (lambda sampled there); GradMix wraps
the model. One JSON per run (method x split x seed) lands in --out; finished
runs found there are skipped, so an interrupted benchmark resumes. A Markdown
summary (mean +- std over splits x seeds) is written to --summary.

    python benchmarks/osr_benchmark.py --dataset fashion_mnist --splits 0,1,2,3,4 \\
        --seeds 0,1,2 --epochs 6 --summary docs/results/fashion_mnist_osr.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_gradmix.data import load_osr_split, osr_classes  # noqa: E402
from common import (  # noqa: E402
    CONTRASTIVE,
    GRADMIX,
    METHODS,
    cached_run,
    machine,
    mean_std,
    paired_cells,
    paired_differences,
    parse_methods,
    train,
)
from keras_gradmix.osr import (  # noqa: E402
    calibration_by_score,
    evaluate_full_spectrum,
    evaluate_model_open_set,
    metrics_by_score,
    open_set_scores,
)
from keras_gradmix.tables import to_markdown  # noqa: E402

SCORES = ("mls", "msp")
# Post-hoc scores of today's standard (OpenOOD), fitted on the GAP features.
MORE_SCORES = ("energy", "gen", "knn", "mahalanobis", "react", "ash", "scale", "vim")
# The paper's recipe scores with the authors' relative kNN (k = 3).
CONTRASTIVE_SCORES = ("knn_relative",)
METRICS = ("accuracy", "auroc", "oscr", "fpr95")
# Full-spectrum rows: the known test images under these corruptions (severity 3) count as known.
SHIFTS = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg_compression")


def run_one(dataset, method, split, seed, epochs, batch_size, data_dir, verbose) -> dict:
    keras.utils.set_random_seed(seed)  # the shuffle's order depends on the global seed too
    data = load_osr_split(dataset, split, batch_size=batch_size, data_dir=data_dir,
                          shuffle_seed=seed)
    classes = len(osr_classes(dataset, split)[0])
    model, seconds = train(method, data.known_train, classes, seed, epochs, verbose)
    if method in CONTRASTIVE:  # no classifier: kNN predictions and scores on the GAP features
        results = evaluate_model_open_set(
            model, data.known_test, data.unknown_test, CONTRASTIVE_SCORES,
            feature_layer="features", train_data=data.known_train, predictions="knn")
        extra = {}
    else:
        raw = open_set_scores(model, data.known_test, data.unknown_test, SCORES + MORE_SCORES,
                              feature_layer="features", train_data=data.known_train)
        results = metrics_by_score(raw)
        calibration = calibration_by_score(raw)
        full = evaluate_full_spectrum(model, data.known_test, data.unknown_test, SCORES,
                                      corruptions=SHIFTS, severities=(3,), seed=seed)
        extra = {"calibration": {"ece": calibration["ece"], **{
                     f"aurc_{score}": calibration["aurc"][score] for score in SCORES}},
                 "full_spectrum": {score: full[score]["full_spectrum"] for score in SCORES}}
    return {"dataset": dataset, "method": method, "split": split, "seed": seed, "epochs": epochs,
            "batch_size": batch_size, "train_seconds": seconds, "results": results, **extra}


def summarize_calibration(runs: list[dict], methods) -> str:
    """Markdown: ECE, AURC and the full-spectrum AUROC / FPR95 per method
    (mean ± std), and their paired differences to plain."""
    rows = [{"method": r["method"], "split": r["split"], "seed": r["seed"],
             "ece": 100 * r["calibration"]["ece"],
             **{f"aurc ({s})": 100 * r["calibration"][f"aurc_{s}"] for s in SCORES},
             **{f"{m} ({s})": 100 * r["results"][s][m] for s in SCORES for m in ("auroc", "fpr95")},
             **{f"full-spectrum {m} ({s})": 100 * r["full_spectrum"][s][m]
                for s in SCORES for m in ("auroc", "fpr95")}}
            for r in runs if "calibration" in r]
    if not rows:
        return ""
    keys = [k for k in rows[0] if k not in ("method", "split", "seed")]
    table = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        if mine:
            (stats,) = mean_std(mine, ["method"], keys)
            table.append({"method": method, "runs": stats["runs"],
                          **{k: f"{stats[k]:.2f} ± {stats[k + '_std']:.2f}" for k in keys}})
    paired = [{"method": d["method"], "metric": key, **paired_cells(d)}
              for key in keys for d in paired_differences(rows, key, "plain") if d["pairs"]]
    return "\n".join([
        "Calibration and selective risk of the known-class predictions (ECE: 15 equal-width "
        "bins of the max softmax; AURC: area under the risk-coverage curve when the score "
        "decides which predictions are kept; both lower is better), and full-spectrum "
        f"open-set rows (the known test images plus their copies under {', '.join(SHIFTS)} "
        "at severity 3 count as known, against the same unknown classes; OpenOOD v1.5), "
        "beside the standard rows of the same runs (%, mean ± std):", "", to_markdown(table), "",
        "Paired differences to plain on the same split and seed (points; 95 % t-interval; "
        "wins = pairs where the method is higher, so for ECE, AURC and FPR95 fewer wins is "
        "better):", "", to_markdown(paired)])


def legacy(run: dict) -> dict:
    """Runs stored before the kNN scores were renamed: the authors' score was
    "knn"; it is "knn_relative" now ("knn" is Sun et al.'s)."""
    results = run["results"]
    if run["method"] in CONTRASTIVE and "knn" in results and "knn_relative" not in results:
        run = {**run, "results": {"knn_relative" if k == "knn" else k: v for k, v in results.items()}}
    return run


def summarize(runs: list[dict], meta: dict) -> str:
    """Markdown: per method, mean +- std over splits x seeds of each metric;
    AUROC by score; paired differences to plain on the same split and seed."""
    scores = SCORES + (CONTRASTIVE_SCORES if set(meta["methods"]) & set(CONTRASTIVE) else ())
    columns = [(score, metric) for score in scores for metric in METRICS if
               not (score == "msp" and metric == "accuracy")]
    rows = [{"method": r["method"], "split": r["split"], "seed": r["seed"],
             "seconds": r["train_seconds"],
             **{f"{score}/{metric}": 100 * values[metric]
                for score, values in r["results"].items() for metric in METRICS}} for r in runs]
    table = []
    for method in meta["methods"]:
        mine = [row for row in rows if row["method"] == method]
        if not mine:
            continue
        present = [f"{s}/{m}" for s, m in columns if f"{s}/{m}" in mine[0]]
        (stats,) = mean_std(mine, ["method"], present + ["seconds"])
        row = {"method": method, "runs": stats["runs"]}
        for score, metric in columns:
            name = f"{metric} ({score})" if metric != "accuracy" or score.startswith("knn") else "accuracy"
            key = f"{score}/{metric}"
            # "–": logit scores of an encoder, kNN of a classifier
            row[name] = f"{stats[key]:.2f} ± {stats[key + '_std']:.2f}" if key in stats else "–"
        row["train s / run"] = f"{stats['seconds']:.0f}"
        table.append(row)
    text = [to_markdown(table)]
    more = [s for s in MORE_SCORES if any(f"{s}/auroc" in row for row in rows)]
    if more:
        by_score = []
        for method in meta["methods"]:
            mine = [row for row in rows if row["method"] == method and f"{more[0]}/auroc" in row]
            if mine:
                keys = [f"{s}/auroc" for s in SCORES + tuple(more)]
                (stats,) = mean_std(mine, ["method"], keys)
                by_score.append({"method": method, **{k.split("/")[0]: f"{stats[k]:.2f} ± "
                                                      f"{stats[k + '_std']:.2f}" for k in keys}})
        text += ["", "AUROC (%) by score, mean ± std (feature scores fitted once on the GAP "
                 "features of the known training images):", "", to_markdown(by_score)]
        by_score_paired = []
        for score in SCORES + tuple(more):
            key = f"{score}/auroc"
            for d in paired_differences([r for r in rows if key in r], key, "plain"):
                if d["pairs"]:
                    by_score_paired.append({"method": d["method"], "score": score, **paired_cells(d)})
        if by_score_paired:
            text += ["", "AUROC by score: paired difference to plain on the same split and seed "
                     "(points; 95 % t-interval, df = pairs - 1; wins):", "",
                     to_markdown(by_score_paired)]
    paired = []
    for score in scores:
        for metric, label in (("auroc", "AUROC"), ("accuracy", "accuracy"), ("oscr", "OSCR")):
            key = f"{score}/{metric}"
            having = [m for m in meta["methods"] if any(r["method"] == m and key in r for r in rows)]
            if len(having) < 2 or (metric == "accuracy" and score == "msp"):
                continue
            baseline = "plain" if "plain" in having else having[0]  # e.g. supcon for knn scores
            for d in paired_differences([r for r in rows if key in r], key, baseline):
                if not d["pairs"]:
                    continue
                paired.append({"method": d["method"], "baseline": baseline,
                               "metric": label if score == "mls" and metric == "accuracy"
                               else f"{label} ({score})", **paired_cells(d)})
    if paired:
        text += ["", "Paired differences to the baseline on the same split and seed "
                 "(percentage points; 95 % t-interval over the pairs, df = pairs - 1; wins = "
                 "pairs where the method is higher):", "", to_markdown(paired)]
    return "\n".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist",
                        choices=["fashion_mnist", "mnist5k", "mnist", "cifar10", "cifar+10",
                                 "cifar+50", "svhn", "tinyimagenet"])
    parser.add_argument("--splits", default="0,1,2,3,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="folder of per-run JSON (default results/osr/<dataset>)")
    parser.add_argument("--summary", default=None, help="Markdown summary path (default <out>/summary.md)")
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--from-json", default=None,
                        help="recompute the summary from the runs of a summary JSON (no training)")
    args = parser.parse_args(argv)

    methods = parse_methods(parser, args.methods, METHODS)
    splits = [int(s) for s in args.splits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or os.path.join("results", "osr", args.dataset)
    os.makedirs(out, exist_ok=True)
    runs = []
    if args.from_json:  # the stored runs, written back as per-run files (the cache)
        with open(args.from_json) as f:
            stored = json.load(f)
        for run in map(legacy, stored["runs"]):
            with open(os.path.join(out, f"{run['method']}_split{run['split']}_seed{run['seed']}.json"),
                      "w") as f:
                json.dump(run, f, indent=1)
    for split in splits:
        for seed in seeds:
            for method in methods:
                runs.append(cached_run(
                    os.path.join(out, f"{method}_split{split}_seed{seed}.json"), args.epochs,
                    f"{args.dataset} split {split} seed {seed} {method}",
                    lambda: run_one(args.dataset, method, split, seed, args.epochs,
                                    args.batch_size, args.data_dir, args.verbose)))

    command = " ".join(["python benchmarks/osr_benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    if args.from_json:
        trained = stored["meta"]["command"].split("` (trained)")[0]
        command = f"{trained}` (trained); summarised by `{command}"
    meta = {
        "command": command,
        "methods": methods, "splits": splits, "seeds": seeds, "epochs": args.epochs,
        "keras": keras.__version__, "tensorflow": tf.__version__,
        "machine": machine(),
    }
    table = summarize(runs, meta)
    calibration = summarize_calibration(runs, methods)
    if calibration:
        table += "\n\n" + calibration
    text = "\n".join([
        f"# Open-set recognition on {args.dataset}: plain vs CutMix, MixUp, GradMix",
        "",
        f"Splits {splits} x seeds {seeds}; mean ± std (%) over those runs. Known classes: "
        f"the split's list (Fashion-MNIST and mnist5k reuse the MNIST lists); test on all "
        f"known- and unknown-class test images. Model: lean CNN (3 conv-BN-ReLU stages "
        f"16/32/64, GAP, Dense), Adam 1e-3 with cosine decay to 0 over {args.epochs} epochs, "
        f"batch {args.batch_size}, one-hot cross-entropy. CutMix: `keras.layers.CutMix()` "
        f"defaults; MixUp: `keras.layers.MixUp()` (alpha 0.2). GradMix: {GRADMIX}, noise "
        f"fill, paired (gradmix) or replace (gradmix-replace) mode, BatchNorm statistics "
        f"from the clean batch. Scores: MLS (max logit), MSP (max softmax) and, where "
        f"computed, energy, GEN, kNN (Sun et al., k = 50), Mahalanobis, ReAct, ASH-S, SCALE "
        f"and ViM on the GAP features (keras_gradmix.osr.scorers); FPR95 = "
        f"unknowns accepted at 95 % of knowns accepted (lower is better). supcon / "
        f"supcon+gradmix (the paper's recipe, shortened): the same CNN with a 64-64-32 "
        f"projection head, two views (random shift 10 %, horizontal flip), SupCon + SimCLR "
        f"at temperature 0.05 (+ the masked-positive term with the same GradMix options); "
        f"closed-set accuracy by a 3-NN vote and the authors' relative kNN score "
        f"(knn_relative, top-3 cosine similarities per class) on the GAP features of the "
        f"known training images.",
        "",
        table,
        "",
        f"Command: `{meta['command']}`  ",
        f"Keras {meta['keras']}, TensorFlow {meta['tensorflow']}; {meta['machine']}.",
        "",
    ])
    summary = args.summary or os.path.join(out, "summary.md")
    os.makedirs(os.path.dirname(os.path.abspath(summary)), exist_ok=True)
    with open(summary, "w") as f:
        f.write(text)
    with open(os.path.splitext(summary)[0] + ".json", "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=1)
    print(text)
    return runs


if __name__ == "__main__":
    main()
