"""The models the examples, benchmarks and tests share (plain Keras, any backend).

``small_cnn``: the demo's CNN (conv-pool-conv-pool-Flatten-Dense, 28x28);
``lean_cnn``: the benchmarks' three conv-BN-ReLU stages with GAP;
``resnet18``: the CIFAR-style ResNet-18 of the GradMix authors' code.

A ``seed`` seeds the builder's own weight initializers: the same seed gives
the same weights, and the process's random state (``keras.utils.set_random_seed``,
NumPy, Python) is left alone.
"""

from __future__ import annotations

import itertools

import keras

layers = keras.layers


def _kernels(seed: int | None):
    """A source of Glorot-uniform kernel initializers (Keras' default), each
    seeded from ``seed`` and its position in the model; None: unseeded."""
    count = itertools.count()
    return lambda: keras.initializers.GlorotUniform(None if seed is None else seed * 1000 + next(count))


def small_cnn(seed: int = 0, classes: int = 10, input_shape=(28, 28, 1)) -> keras.Model:
    """conv1 (16) -> pool -> conv2 (32) -> pool -> Flatten -> Dense logits."""
    kernel = _kernels(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1",
                          kernel_initializer=kernel()),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2",
                          kernel_initializer=kernel()),
            layers.MaxPooling2D(),
            layers.Flatten(name="flatten"),
            layers.Dense(classes, name="logits", kernel_initializer=kernel()),
        ],
        name="small_cnn",
    )


def lean_cnn(input_shape, classes: int, seed: int, projection: bool = False) -> keras.Model:
    """Three conv-BN-ReLU stages (16, 32, 64 channels; 28 -> 14 -> 7) named
    ``stage1``..``stage3``, GAP (``features``), Dense (class logits, or with
    ``projection`` a 64-64-32 head for contrastive training)."""
    kernel = _kernels(seed)

    def stage(x, filters, name):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=kernel())(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu", name=name)(x)

    inputs = keras.Input(input_shape)
    x = stage(inputs, 16, "stage1")
    x = layers.MaxPooling2D()(x)
    x = stage(x, 32, "stage2")
    x = layers.MaxPooling2D()(x)
    x = stage(x, 64, "stage3")
    x = layers.GlobalAveragePooling2D(name="features")(x)
    if projection:
        x = layers.Dense(64, activation="relu", name="projection_hidden", kernel_initializer=kernel())(x)
        return keras.Model(inputs, layers.Dense(32, name="projection", kernel_initializer=kernel())(x),
                           name="lean_encoder")
    return keras.Model(inputs, layers.Dense(classes, name="logits", kernel_initializer=kernel())(x),
                       name="lean_cnn")


def _basic_block(x, filters: int, stride: int, name: str, kernel):
    shortcut = x
    y = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=f"{name}_conv1",
                      kernel_initializer=kernel())(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2",
                      kernel_initializer=kernel())(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, stride, use_bias=False, name=f"{name}_proj",
                                 kernel_initializer=kernel())(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def resnet18(input_shape=(32, 32, 3), classes: int = 6, width: int = 64,
             seed: int | None = None) -> keras.Model:
    """CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool, four stages of two
    BasicBlocks); each stage's output is the layer named ``layer1``..``layer4``,
    the pooled features ``features``. ``seed`` None: Keras' global RNG."""
    kernel = _kernels(seed)
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv",
                      kernel_initializer=kernel())(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for stage, (multiplier, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
        for block in range(2):
            x = _basic_block(x, width * multiplier, stride if block == 0 else 1,
                             f"layer{stage}_block{block}", kernel)
            # Block output after the residual add: named like the authors' stages.
            x = layers.ReLU(name=f"layer{stage}" if block == 1 else f"layer{stage}_block0_out")(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits", kernel_initializer=kernel())(x),
                       name="resnet18")
