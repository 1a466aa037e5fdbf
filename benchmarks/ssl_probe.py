"""The paper's self-supervised claim: do GradMix positives make SimCLR features
better for downstream classification? Measured by a linear probe.

For each seed, the lean CNN with a 64-64-32 projection head is trained without
labels by SimCLR (NT-Xent on two views: random shift 10 %, horizontal flip) and
by SimCLR + GradMix (view 1 masked at its LayerCAM peak on stages 2 + 3, its
features the positives of view 2; the same options as the benchmarks), on the
first ``--train-per-class`` images of each class; then a multinomial logistic
regression on the frozen, L2-normalised GAP features of those images (with
their labels) classifies the whole test set; the same probe on the untrained
encoder is the floor. Reports the probe's accuracy per method (mean ± std over
seeds) and the paired difference to SimCLR on the same
seed (t-interval). ``simclr+gradmix-random`` is the control: the same box at a
uniformly random place (``placement="random"``), so a gain of GradMix over it
is the attribution's, not one more masked view's. Each finished run is a JSON
file in --out, so an interrupted study resumes.

    python benchmarks/ssl_probe.py --epochs 60 --seeds 0,1,2
    python benchmarks/ssl_probe.py --epochs 30 --train-per-class 300 --seeds 0,1,2 \
        --out docs/results/ssl_probe_small --summary docs/results/ssl_probe_small.md
    python benchmarks/ssl_probe.py --smoke --out /tmp/ssl   # seconds, mnist5k
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_gradmix.data.loaders import load_arrays  # noqa: E402
from common import (  # noqa: E402
    cached_run,
    first_per_class,
    machine,
    mean_std,
    paired_cells,
    paired_differences,
    pixels,
    shuffled_batches,
    train,
)
from keras_gradmix.osr.features import collect  # noqa: E402
from keras_gradmix.osr.probe import linear_probe  # noqa: E402
from keras_gradmix.tables import to_markdown  # noqa: E402
from keras_gradmix.zoo import lean_cnn  # noqa: E402


UNTRAINED = "untrained"  # the encoder at its initial weights: the probe's floor
# Method -> (trainer method, GradMix options changed from the benchmarks').
METHODS = {UNTRAINED: (None, {}), "simclr": ("simclr", {}), "simclr+gradmix": ("simclr+gradmix", {}),
           "simclr+gradmix-random": ("simclr+gradmix", {"placement": "random"})}

def load(dataset: str, per_class: int, data_dir=None, limit_test=None):
    """The first ``per_class`` training images of every class and the test set."""
    arrays = load_arrays(dataset, data_dir)
    x, y = arrays["x_train"], arrays["y_train"]
    keep = first_per_class(y, range(10), per_class)
    return (pixels(x[keep]), y[keep].astype(np.int64)), \
        (pixels(arrays["x_test"][:limit_test]), arrays["y_test"][:limit_test].astype(np.int64))


def run_one(data, method, seed, epochs, batch_size, temperature) -> dict:
    (x, y), (x_test, y_test) = data
    if method == UNTRAINED:  # what the probe gets from the architecture alone
        encoder, seconds = lean_cnn(x.shape[1:], 10, seed, projection=True), 0.0
    else:
        ds = shuffled_batches(x, y, seed, batch_size, drop_remainder=True)
        trainer, options = METHODS[method]
        encoder, seconds = train(trainer, ds, 10, seed, epochs, options=options,
                                 recipe=dict(temperature=temperature))
    train_features = collect(encoder, (x, y), feature_layer="features")["features"]
    test_features = collect(encoder, (x_test, y_test), feature_layer="features")["features"]
    predicted = linear_probe(train_features, y, test_features)
    return {"method": method, "options": METHODS[method][1], "seed": seed, "epochs": epochs,
            "train_images": len(x),
            "temperature": temperature, "train_seconds": seconds,
            "probe_accuracy": float(np.mean(predicted == y_test))}


def summarize(runs, meta) -> str:
    rows = [{**r, "probe accuracy": 100 * r["probe_accuracy"]} for r in runs]
    stats = mean_std(rows, ["method"], ["probe accuracy", "train_seconds"])
    table = [{"method": s["method"], "runs": s["runs"],
              "probe accuracy": f"{s['probe accuracy']:.2f} ± {s['probe accuracy_std']:.2f}",
              "train s / run": f"{s['train_seconds']:.0f}"} for s in stats]
    paired = [{"method": d["method"], **paired_cells(d)}
              for d in paired_differences(rows, "probe accuracy", "simclr", pair=("seed",))]
    # The control: GradMix's box at the peak against the same box at a random place.
    control = [{"contrast": "simclr+gradmix − simclr+gradmix-random", **paired_cells(d)}
               for d in paired_differences([r for r in rows if r["method"].startswith("simclr+gradmix")],
                                           "probe accuracy", "simclr+gradmix-random", pair=("seed",))]
    return "\n".join([
        "# Self-supervised features: SimCLR vs SimCLR + GradMix (peak and random "
        "placement), linear probe", "",
        f"{meta['dataset']}, the first {meta['per_class']} training images per class (no labels "
        f"in training), lean CNN + 64-64-32 projection, two views (shift 10 %, flip), NT-Xent at "
        f"temperature {meta['temperature']}, Adam 1e-3 with cosine decay over {meta['epochs']} "
        f"epochs, batch {meta['batch_size']}; GradMix: LayerCAM on stage2 + stage3, noise boxes "
        f"10-50 %, the masked view's features the positives (`-random`: the same box at a "
        f"uniformly random place). Probe: logistic regression on the "
        f"L2-normalised GAP features of the training images, accuracy (%) on the test set; "
        f"`untrained`: the same probe on the encoder at its initial weights. "
        f"Seeds {meta['seeds']}; mean ± std.", "",
        to_markdown(table), "",
        "Paired difference to SimCLR on the same seed (points; 95 % t-interval over the pairs, "
        "df = pairs - 1):", "",
        to_markdown(paired) if paired else "(one method only)", "",
        *(["Peak against random placement on the same seed (does the attribution matter?):", "",
           to_markdown(control), ""] if control else []),
        f"Command: `{meta['command']}`  ", f"Keras {keras.__version__}, TensorFlow "
        f"{tf.__version__}; {meta['machine']}.", ""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist5k"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=os.path.join("docs", "results", "ssl_probe"))
    parser.add_argument("--summary", default=os.path.join("docs", "results", "ssl_probe.md"))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {list(METHODS)}")
    parser.add_argument("--smoke", action="store_true", help="mnist5k, 20 per class, 1 epoch")
    args = parser.parse_args(argv)
    limit_test = None
    if args.smoke:
        args.dataset, args.train_per_class, args.epochs, args.batch_size = "mnist5k", 20, 1, 64
        args.summary, limit_test = os.path.join(args.out, "summary.md"), 200
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    if any(m not in METHODS for m in methods):
        parser.error(f"--methods must come from {list(METHODS)}; got {methods}")
    data = load(args.dataset, args.train_per_class, args.data_dir, limit_test)
    runs = [cached_run(os.path.join(args.out, f"{method}_seed{seed}.json"), args.epochs,
                       f"{method} seed {seed}",
                       lambda: run_one(data, method, seed, args.epochs, args.batch_size, args.temperature))
            for seed in seeds for method in methods]
    meta = {"command": " ".join(["python benchmarks/ssl_probe.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "dataset": args.dataset, "per_class": args.train_per_class, "epochs": args.epochs,
            "batch_size": args.batch_size, "temperature": args.temperature, "seeds": seeds,
            "machine": machine()}
    text = summarize(runs, meta)
    os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
    with open(args.summary, "w") as f:
        f.write(text)
    print(text)
    return runs


if __name__ == "__main__":
    main()
