"""The paper's own recipe: supervised-contrastive ResNet-18 with GradMix positives.

For a machine with a GPU and internet (tensorflow-datasets downloads CIFAR-10
once). A CIFAR ResNet-18 encoder with a 512-512-128 projection head, two
augmented views per image (crop + flip), SupCon + SimCLR at temperature 0.05,
the GradMix term from LayerCAM on ``layer3`` + ``layer4`` of the unsupervised
loss (view 1 masked with noise at the attribution peak, its features the
positives of view 2), SGD with cosine decay; open-set scores by kNN (top-3
cosine similarities) on the 512-d features, closed-set predictions by a 3-NN
vote, every few epochs.

    python examples/supcon_osr.py --split 0 --epochs 500 --out results/supcon_cifar10
    python examples/supcon_osr.py --smoke   # seconds, offline, tfds mock data
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_gradmix.contrastive import GradMixContrastive, SupConModel  # noqa: E402
from keras_gradmix.data import two_views  # noqa: E402
from keras_gradmix.osr import OpenSetEvaluation  # noqa: E402
from keras_gradmix.zoo import resnet18  # noqa: E402
from cifar_split import cifar10_split  # noqa: E402


def encoder(width: int = 64, projection: int = 128) -> keras.Model:
    """ResNet-18 up to its pooled features, then the 512-512-128 projection head."""
    backbone = resnet18(width=width)
    features = backbone.get_layer("features").output
    x = keras.layers.Dense(8 * width, activation="relu", name="projection_hidden")(features)
    x = keras.layers.Dense(projection, name="projection")(x)
    return keras.Model(backbone.inputs, x, name="supcon_resnet18")


def augment(images):
    import tensorflow as tf

    padded = tf.image.resize_with_crop_or_pad(images, 40, 40)
    crops = tf.map_fn(lambda im: tf.image.random_crop(im, [32, 32, 3]), padded)
    return tf.image.random_flip_left_right(crops)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--no-gradmix", action="store_true", help="SupCon + SimCLR only")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=os.path.join("results", "supcon_cifar10"))
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA (GPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="offline check: tfds mock data, width 8, 1 epoch of 2 steps")
    args = parser.parse_args(argv)
    import tensorflow as tf

    with cifar10_split(args) as (data, evaluation, steps, steps_per_epoch):
        pairs = two_views(data.known_train, augment).prefetch(tf.data.AUTOTUNE)
        model = encoder(args.width)
        if args.no_gradmix:
            trainer = SupConModel(model)
        else:
            trainer = GradMixContrastive(model, layer=["layer3", "layer4"], seed=args.split)
        schedule = keras.optimizers.schedules.CosineDecay(
            args.lr, decay_steps=args.epochs * steps_per_epoch)
        trainer.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                        jit_compile=True if args.jit else "auto")
        callbacks = [
            OpenSetEvaluation(evaluation.known_test, evaluation.unknown_test, scores=("knn_relative",),
                              every=args.eval_every, train_data=evaluation.known_train,
                              feature_layer="features", predictions="knn",
                              csv_path=os.path.join(args.out, "osr.csv")),
            keras.callbacks.ModelCheckpoint(os.path.join(args.out, "best.keras"),
                                            monitor="val_osr_auroc_knn_relative", mode="max",
                                            save_best_only=True),
        ]
        history = trainer.fit(pairs, epochs=args.epochs, steps_per_epoch=steps,
                              callbacks=callbacks, verbose=2)
    model.save(os.path.join(args.out, "encoder.keras"))
    print(f"Wrote {args.out}/: osr.csv, best.keras, encoder.keras")
    return history


if __name__ == "__main__":
    main()
