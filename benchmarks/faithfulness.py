"""Which layer and which attribution point at what the model uses?

Trains the zoo's models (plain training, Adam 1e-3) on Fashion-MNIST and,
for each candidate layer and attribution method, measures
:func:`keras_gradmix.faithfulness` on held-out test images: the mean drop of
the true-class probability when a box of 25 % of the image is blanked (0) at
the map's peak, at a random place and at the map's minimum. A faithful
choice gives peak > random > low; the gap peak - random is how much the map
knows beyond "somewhere on the object". Writes docs/results/faithfulness.{json,md}.

    python benchmarks/faithfulness.py                    # the committed table
    python benchmarks/faithfulness.py --smoke --out /tmp/f
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gradmix  # noqa: E402
from common import machine  # noqa: E402
from keras_gradmix.data import load_arrays  # noqa: E402
from keras_gradmix.zoo import lean_cnn, resnet18, small_cnn  # noqa: E402

ATTRIBUTIONS = ("layercam", "gradcam", "gradcam++")
MODELS = {
    # name: (builder, candidate layers: a name or a list for the summed map)
    "small_cnn": (lambda seed: small_cnn(seed), ["conv1", "conv2"]),
    "lean_cnn": (lambda seed: lean_cnn((28, 28, 1), 10, seed),
                 ["stage1", "stage2", "stage3", ["stage2", "stage3"]]),
    "resnet18 (width 16)": (lambda seed: resnet18((28, 28, 1), 10, width=16, seed=seed),
                            ["layer1", "layer2", "layer3", "layer4"]),
}


def train(builder, x, y, epochs, seed, batch_size=128):
    """Plain training, Adam 1e-3 with cosine decay to 0 (the studies' recipe:
    at a constant rate the BatchNorm models' test accuracy swings widely)."""
    keras.utils.set_random_seed(seed)
    model = builder(seed)
    steps = epochs * -(-len(x) // batch_size)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--area", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="one small model, a few images")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)
    models = MODELS
    if args.smoke:
        args.epochs, args.train_images, args.test_images = 1, 256, 16
        models = {"small_cnn": MODELS["small_cnn"]}

    data = load_arrays("fashion_mnist")
    x = (data["x_train"][:args.train_images, ..., None] / 255.0).astype("float32")
    y = data["y_train"][:args.train_images]
    x_test = (data["x_test"][:args.test_images, ..., None] / 255.0).astype("float32")
    y_test = data["y_test"][:args.test_images]

    rows = []
    for name, (builder, layers) in models.items():
        start = time.perf_counter()
        model = train(builder, x, y, args.epochs, args.seed)
        accuracy = float(np.mean(np.asarray(model.predict(x_test, verbose=0)).argmax(1) == y_test))
        print(f"{name}: trained in {time.perf_counter() - start:.0f} s, test accuracy {accuracy:.3f}",
              flush=True)
        for layer in layers:
            for attribution in ATTRIBUTIONS:
                drops = keras_gradmix.faithfulness(model, x_test, y_test, layer, args.area,
                                                   attribution, batch_size=100, seed=args.seed)
                low, high = drops["interval"]["peak - random"]
                rows.append({
                    "model": name, "accuracy": accuracy,
                    "layer": layer if isinstance(layer, str) else " + ".join(layer),
                    "attribution": attribution,
                    **{place: drops[place] for place in ("peak", "random", "low")},
                    "peak_minus_random": drops["peak - random"],
                    "peak_minus_random_interval": [low, high],
                    "std": drops["std"],
                    "faithful": bool(low > 0 and drops["random"] > drops["low"]),
                })
                print(rows[-1], flush=True)

    command = "python benchmarks/faithfulness.py" + (" " + " ".join(argv) if argv else
                                                      " " + " ".join(sys.argv[1:])).rstrip()
    result = {
        "command": command.strip(),
        "schedule": f"plain training, Adam 1e-3 with cosine decay to 0, batch 128, {args.epochs} "
                    f"epochs on the first "
                    f"{args.train_images} Fashion-MNIST training images; {args.test_images} test "
                    f"images; box area {args.area}, blanked to 0",
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend(),
                     "keras_gradmix": keras_gradmix.__version__},
        "machine": machine(),
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "faithfulness.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [
        "# Faithfulness of each layer's attribution",
        "",
        f"`{result['command']}` ({result['schedule']}; Keras {keras.__version__}, "
        f"{keras.backend.backend()}; {result['machine']}).",
        "",
        "Mean drop of the true-class probability when the box is blanked at the map's peak, at a "
        "random place, at the map's minimum (boxes of the same area: shifted inside the image near "
        "the border); peak - random with its 95 % t-interval over images. Faithful: peak - random "
        "above 0 (the whole interval) and random > low.",
        "",
        "| model (test acc.) | layer | attribution | peak | random | low | peak - random [95 % CI] | faithful |",
        "|---|---|---|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['accuracy']:.3f}) | `{r['layer']}` | {r['attribution']} | "
            f"{r['peak']:.3f} | {r['random']:.3f} | {r['low']:.3f} | "
            f"{r['peak_minus_random']:+.3f} [{r['peak_minus_random_interval'][0]:+.3f}, "
            f"{r['peak_minus_random_interval'][1]:+.3f}] | "
            f"{'yes' if r['faithful'] else 'no'} |")
    with open(os.path.join(args.out, "faithfulness.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
