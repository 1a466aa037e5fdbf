"""At what budget does the paper's contrastive recipe work, and there, does
GradMix help it?

Fashion-MNIST open-set splits, the lean CNN trained on the first
``--train-per-class`` images of each known class (Adam 1e-3, cosine decay to 0,
two views: shift 10 %, flip). Contrastive encoders are scored on their GAP
features: kNN of Sun et al. (k = 50, L2-normalised) and the authors' relative
kNN (k = 3), closed-set predictions by a kNN vote; cross-entropy (``plain``) is
scored by MLS and the same kNN, as the reference the recipe should approach.

* ``--probe``: plain SupCon (the recipe without GradMix) at every epoch count
  x temperature of the grid, beside cross-entropy at each epoch count: where
  does SupCon clearly beat chance and come near cross-entropy?
* default: at one budget (``--epochs``, ``--temperature``) ``plain``, ``supcon``
  and ``supcon+gradmix`` over splits x seeds, and the per-pair difference of
  SupCon + GradMix to SupCon on the same split and seed (t-interval, wins).

One JSON per run in --out (method, epochs, temperature, split, seed); finished
runs are skipped, so a study interrupted on one machine resumes on another.

    python benchmarks/contrastive_budget.py --probe --epochs-grid 20,60 --temperatures 0.1,0.5
    python benchmarks/contrastive_budget.py --epochs 60 --temperature 0.1 --splits 0,1 --seeds 0,1
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

from common import (  # noqa: E402
    CONTRASTIVE,
    cached_run,
    machine,
    mean_std,
    open_set_arrays,
    paired_cells,
    paired_differences,
    shuffled_batches,
    train,
)
from keras_gradmix.osr import evaluate_model_open_set  # noqa: E402
from keras_gradmix.tables import to_markdown  # noqa: E402

ENCODER_SCORES = ("knn", "knn_relative")
CLASSIFIER_SCORES = ("mls", "knn")
METRICS = ("accuracy", "auroc", "oscr")
COLUMNS = ("knn/accuracy", "knn/auroc", "knn_relative/auroc", "mls/auroc", "knn/oscr")


def run_one(data, method, split, seed, epochs, temperature, batch_size) -> dict:
    x, y = data["train"]
    train_ds = shuffled_batches(x, y, seed, batch_size, drop_remainder=True)
    encoder = method in CONTRASTIVE
    model, seconds = train(method, train_ds, int(y.max()) + 1, seed, epochs,
                           recipe=dict(temperature=temperature) if encoder else None)
    known = tf.data.Dataset.from_tensor_slices(data["known_test"]).batch(512)
    unknown = tf.data.Dataset.from_tensor_slices(data["unknown_test"]).batch(512)
    results = evaluate_model_open_set(
        model, known, unknown, ENCODER_SCORES if encoder else CLASSIFIER_SCORES,
        feature_layer="features", train_data=tf.data.Dataset.from_tensor_slices((x, y)).batch(512),
        predictions="knn" if encoder else "logits")
    return {"method": method, "split": split, "seed": seed, "epochs": epochs,
            "temperature": temperature if encoder else None, "batch_size": batch_size,
            "train_images": len(x), "train_seconds": seconds, "results": results}


def run_path(out, method, epochs, temperature, split, seed) -> str:
    budget = f"{epochs}ep" + (f"_t{temperature:g}" if method in CONTRASTIVE else "")
    return os.path.join(out, f"{method}_{budget}_split{split}_seed{seed}.json")


def flatten(runs) -> list[dict]:
    """One row per run: method, budget, split, seed, seconds, ``score/metric`` (%)."""
    return [{"method": r["method"], "epochs": r["epochs"],
             "temperature": "–" if r["temperature"] is None else r["temperature"],
             "split": r["split"], "seed": r["seed"], "seconds": r["train_seconds"],
             **{f"{s}/{m}": 100 * v[m] for s, v in r["results"].items() for m in METRICS}}
            for r in runs]


def summary(rows) -> str:
    """Mean ± std per method and budget, then paired differences: each
    encoder's kNN AUROC to cross-entropy's, and SupCon + GradMix to SupCon at
    the same budget, split and seed."""
    table = []
    for group in dict.fromkeys((r["method"], r["epochs"], r["temperature"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["epochs"], r["temperature"]) == group]
        keys = [c for c in COLUMNS if c in mine[0]]
        (s,) = mean_std(mine, ["method"], keys + ["seconds"])
        row = {"method": group[0], "epochs": group[1], "temperature": group[2], "runs": s["runs"]}
        for column in COLUMNS:
            score, metric = column.split("/")
            name = "accuracy" if column == "knn/accuracy" else f"{metric.upper()} ({score})"
            row[name] = f"{s[column]:.2f} ± {s[column + '_std']:.2f}" if column in s else "–"
        row["train s / run"] = f"{s['seconds']:.0f}"
        table.append(row)
    paired = []
    for key, label in (("knn/auroc", "AUROC (knn)"), ("knn_relative/auroc", "AUROC (knn_relative)"),
                       ("knn/accuracy", "accuracy"), ("knn/oscr", "OSCR (knn)")):
        for d in paired_differences([r for r in rows if r["method"] in CONTRASTIVE], key, "supcon",
                                    pair=("split", "seed", "epochs", "temperature")):
            if d["pairs"]:
                paired.append({"method": d["method"], "metric": label, **paired_cells(d)})
    # each encoder against cross-entropy on the same split, seed and epochs, same kNN score
    cells = [{**r, "cell": r["method"] if r["method"] not in CONTRASTIVE
              else f"{r['method']} (T {r['temperature']})"} for r in rows]
    versus_plain = [{"method": d["cell"], "epochs": epochs, **paired_cells(d)}
                    for epochs in dict.fromkeys(r["epochs"] for r in cells)
                    for d in paired_differences([r for r in cells if r["epochs"] == epochs],
                                                "knn/auroc", "plain", by="cell")
                    if d["pairs"]]
    text = [to_markdown(table)]
    if versus_plain:
        text += ["", "kNN AUROC minus cross-entropy's (the same kNN score on its GAP features) "
                 "on the same split, seed and epochs (points; 95 % t-interval; wins):", "",
                 to_markdown(versus_plain)]
    if paired:
        text += ["", "SupCon + GradMix minus SupCon on the same split, seed and budget "
                 "(points; 95 % t-interval over the pairs, df = pairs - 1; wins = pairs where "
                 "SupCon + GradMix is higher):", "", to_markdown(paired)]
    return "\n".join(text)


def budgets(args) -> list[tuple[str, int, float | None]]:
    """``(method, epochs, temperature)`` of each run per split and seed: with
    ``--probe`` cross-entropy and SupCon at each temperature, per epoch count;
    else cross-entropy, SupCon and SupCon + GradMix at the one budget."""
    if args.probe:
        return [(method, epochs, temperature) for epochs in map(int, args.epochs_grid.split(","))
                for method, temperature in [("plain", None)] + [
                    ("supcon", float(t)) for t in args.temperatures.split(",")]]
    return [("plain", args.epochs, None), ("supcon", args.epochs, args.temperature),
            ("supcon+gradmix", args.epochs, args.temperature)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist5k"])
    parser.add_argument("--splits", default="0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train-per-class", type=int, default=1000, help="0: all")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--probe", action="store_true", help="SupCon over the grid, no GradMix")
    parser.add_argument("--epochs-grid", default="20,60", help="--probe: epoch counts")
    parser.add_argument("--temperatures", default="0.1,0.5", help="--probe: SupCon temperatures")
    parser.add_argument("--epochs", type=int, default=60, help="the budget compared")
    parser.add_argument("--temperature", type=float, default=0.1, help="the budget compared")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=os.path.join("docs", "results", "contrastive_budget"),
                        help="folder of per-run JSON")
    parser.add_argument("--summary", default=None,
                        help="Markdown (default docs/results/contrastive_budget[_probe].md)")
    parser.add_argument("--smoke", action="store_true",
                        help="mnist5k, 16 images per class, 1 epoch, 256 test images (for tests)")
    args = parser.parse_args(argv)
    limit_test = None
    if args.smoke:
        args.dataset, args.train_per_class, args.batch_size, limit_test = "mnist5k", 16, 32, 256
        args.epochs, args.epochs_grid = 1, "1"
        args.summary = args.summary or os.path.join(args.out, "summary.md")
    splits = [int(s) for s in args.splits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_wanted = budgets(args)
    summary_path = args.summary or os.path.join(
        "docs", "results", "contrastive_budget_probe.md" if args.probe else "contrastive_budget.md")

    runs = []
    for split in splits:
        data = open_set_arrays(args.dataset, split, args.train_per_class, args.data_dir, limit_test)
        for seed in seeds:
            for method, epochs, temperature in runs_wanted:
                runs.append(cached_run(
                    run_path(args.out, method, epochs, temperature, split, seed), epochs,
                    f"{method} {epochs} epochs T={temperature} split {split} seed {seed}",
                    lambda: run_one(data, method, split, seed, epochs, temperature, args.batch_size)))
    rows = flatten(runs)
    meta = {"command": " ".join(["python benchmarks/contrastive_budget.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "dataset": args.dataset, "splits": splits, "seeds": seeds,
            "train_per_class": args.train_per_class, "batch_size": args.batch_size,
            "keras": keras.__version__, "tensorflow": tf.__version__, "machine": machine()}
    text = "\n".join([
        f"# The contrastive recipe's budget on {args.dataset} open-set recognition"
        + (" (probe)" if args.probe else ""), "",
        f"Splits {splits} x seeds {seeds}; the lean CNN on the first {args.train_per_class} "
        f"training images of each known class, batch {args.batch_size}, Adam 1e-3 with cosine "
        f"decay to 0 over each run's epochs; tested on all known- and unknown-class test "
        f"images. `supcon`: the paper's recipe without GradMix (SupCon + SimCLR on two views, "
        f"shift 10 % and flip, at the given temperature); `supcon+gradmix`: with the masked "
        f"view's features as positives (LayerCAM on stage2 + stage3, noise boxes 10-50 %); "
        f"`plain`: cross-entropy. Encoders: kNN (Sun et al., k = 50) and the authors' relative "
        f"kNN (k = 3) on the GAP features, accuracy of a kNN vote; plain: MLS and the same kNN, "
        f"accuracy of its own arg-max. Mean ± std (%) over splits x seeds; chance AUROC is 50.", "",
        summary(rows), "",
        f"Command: `{meta['command']}`  ",
        f"Keras {meta['keras']}, TensorFlow {meta['tensorflow']}; {meta['machine']}. Runs "
        f"shared the machine's two cores with other work: train times are indicative.", ""])
    os.makedirs(os.path.dirname(os.path.abspath(summary_path)), exist_ok=True)
    with open(summary_path, "w") as f:
        f.write(text)
    with open(os.path.splitext(summary_path)[0] + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(text)
    return runs


if __name__ == "__main__":
    main()
