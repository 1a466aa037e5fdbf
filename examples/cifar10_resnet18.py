"""The paper-scale recipe: CIFAR-style ResNet-18 with GradMix on CIFAR-10 open-set splits.

For a machine with a GPU and internet (tensorflow-datasets downloads CIFAR-10
once). ResNet-18 as in the authors' code (3x3 stride-1 stem, no max-pool, four
stages of two BasicBlocks, 64-512 channels), GradMix with LayerCAM on the last
two stages (``layer3``, ``layer4``), standard crop + flip augmentation, SGD
with momentum and cosine decay, open-set metrics every few epochs and the best
model by max-logit AUROC kept.

    python examples/cifar10_resnet18.py --split 0 --epochs 200 --out results/cifar10
    python examples/cifar10_resnet18.py --smoke   # seconds, offline, tfds mock data

Cross-entropy training, not the authors' supervised-contrastive recipe.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_gradmix import GradMixModel, MaskPreview  # noqa: E402
from keras_gradmix.osr import OpenSetEvaluation  # noqa: E402
from keras_gradmix.zoo import resnet18  # noqa: E402
from cifar_split import cifar10_split  # noqa: E402

def augment(x, y):
    import tensorflow as tf  # the data pipeline only: resnet18() needs no TensorFlow

    x = tf.image.resize_with_crop_or_pad(x, 40, 40)
    x = tf.image.random_crop(x, tf.concat([tf.shape(x)[:1], [32, 32, 3]], axis=0))
    return tf.image.random_flip_left_right(x), y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--mode", default="paired", choices=["paired", "replace"])
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=os.path.join("results", "cifar10_resnet18"))
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA (GPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="offline check: tfds mock data, width 8, 1 epoch of 2 steps")
    args = parser.parse_args(argv)
    import tensorflow as tf

    with cifar10_split(args) as (data, evaluation, steps, steps_per_epoch):
        known_test, unknown_test = evaluation.known_test, evaluation.unknown_test
        train = data.known_train.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        train = train.prefetch(tf.data.AUTOTUNE)
        model = resnet18(classes=6, width=args.width)
        gm = GradMixModel(model, layer=["layer3", "layer4"], attribution="layercam",
                          mode=args.mode, seed=args.split)
        schedule = keras.optimizers.schedules.CosineDecay(
            args.lr, decay_steps=args.epochs * steps_per_epoch)
        gm.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"], jit_compile=True if args.jit else "auto")
        x_show, y_show = next(iter(known_test))
        callbacks = [
            OpenSetEvaluation(known_test, unknown_test, scores=("mls", "msp"),
                              every=args.eval_every, csv_path=os.path.join(args.out, "osr.csv"),
                              plot_dir=os.path.join(args.out, "osr_plots")),
            MaskPreview(x_show[:8], y_show[:8], os.path.join(args.out, "masks"),
                        every=args.eval_every),
            keras.callbacks.ModelCheckpoint(os.path.join(args.out, "best.keras"),
                                            monitor="val_osr_auroc_mls", mode="max",
                                            save_best_only=True),
        ]
        history = gm.fit(train, epochs=args.epochs, steps_per_epoch=steps, callbacks=callbacks,
                         verbose=2)
    gm.model.save(os.path.join(args.out, "last.keras"))
    print(f"Wrote {args.out}/: osr.csv, osr_plots/, masks/, best.keras, last.keras")
    return history


if __name__ == "__main__":
    main()
