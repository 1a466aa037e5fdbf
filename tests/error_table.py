"""Every bad input keras_gradmix checks: what it is, where it is caught, the message.

One table serves both the documentation (``python tests/error_table.py >
docs/errors.md`` writes docs/errors.md; a test checks that the committed file
is current) and the tests (``tests/test_errors.py`` runs every row on every
backend). A row's ``run(batch)`` does the bad thing; it must raise ``error``
with a message matching ``match``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from conftest import SubclassedCNN, functional_cnn, sequential_cnn, sparse_ce, subclassed_cnn  # noqa: E402

import keras_gradmix  # noqa: E402
from keras_gradmix import GradMixModel, osr  # noqa: E402
from keras_gradmix.contrastive import GradMixContrastive  # noqa: E402

WHERE = {
    "construction": "`GradMixModel(...)` / `GradMixConfig(...)`",
    "compile": "`GradMixModel.compile(...)`",
    "first batch": "`fit` / `train_on_batch`, on the first batch, eagerly, before any update",
    "first step": "while the first train step is traced, before any update",
    "later call": "every `train_on_batch` call after the first, on the host (labels only, no "
                  "device read), before the step",
    "training": "right after the bad batch (on JAX and PyTorch at the latest `check_every` "
                "steps later), which applied no update, nor did any batch after it "
                "(`train_on_batch`: right after the call)",
    "call": "when the evaluation or explanation function is called",
}


@dataclass
class Case:
    id: str
    bad: str  # the bad input, in words
    where: str  # a key of WHERE
    match: str  # regex the message must match
    run: Callable  # run(batch) -> does the bad thing
    error: type = ValueError
    backends: tuple = ("tensorflow", "jax", "torch")


def option(**options):
    return lambda batch: GradMixModel(sequential_cnn(), "conv2", **options)


def text_model():
    return keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(8, 4),
                             keras.layers.Conv1D(4, 3, padding="same", name="conv"),
                             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])


def text_batch():
    return np.array([[2, 3, 4, 5, 0, 0]] * 4, "int32"), np.zeros(4, "int32")


def compiled(model=None, loss=None, **options):
    gm = GradMixModel(model if model is not None else sequential_cnn(), **options)
    gm.compile(optimizer="sgd", loss=loss or sparse_ce())
    return gm


def fit(gm, x, y, **kwargs):
    gm.fit(x, y, **{"batch_size": len(x), "epochs": 1, "verbose": 0, "shuffle": False, **kwargs})


def two_heads():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    flat = keras.layers.Flatten()(h)
    return keras.Model(inputs, [keras.layers.Dense(3)(flat), keras.layers.Dense(2)(flat)])


def side_branch_functional():
    inputs = keras.Input((8, 8, 1))
    keras.layers.Conv2D(2, 3, name="side")(inputs)  # called on the input, unused
    h = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))


class TwoOutputs(SubclassedCNN):
    def call(self, x, training=None):
        h = self.gap(self.conv2(self.pool(self.conv1(x))))
        return self.logits(h), h


class Twice(SubclassedCNN):
    def call(self, x, training=None):
        return self.logits(self.gap(self.conv1(self.conv1(x)[..., :1])))


class SideBranch(SubclassedCNN):
    def call(self, x, training=None):
        self.conv2(self.pool(self.conv1(x)))  # computed, unused
        return self.logits(self.gap(self.conv1(x)))


class NaNAboveOne(keras.layers.Layer):
    """logits + 0 * sqrt(1 - max(image)): the logits of a [0, 1] image, NaN for an
    image with a pixel above 1 (a box filled with 2)."""

    def call(self, logits, images):
        peak = keras.ops.max(images, axis=(1, 2, 3))
        return logits + 0.0 * keras.ops.sqrt(1.0 - peak)[:, None]


def with_nan(x):
    x = x.copy()
    x[0, 0, 0, 0] = np.nan
    return x


def built(model_class, batch):
    model = model_class()
    model(batch[0])
    return model


def nan_in_the_masked_pass(batch):
    cnn = sequential_cnn()
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, NaNAboveOne()(cnn(inputs), inputs))
    fit(compiled(model, layer="sequential_cnn/conv2", fill=2.0, attribution="layercam"), *batch)


def views(batch):
    return np.stack([batch[0], batch[0]], axis=1)


def contrastive_fit(batch, loss=None, four_d=False):
    encoder = keras.Sequential([keras.Input((28, 28, 1)), *sequential_cnn().layers[:-1],
                                keras.layers.Dense(8)])
    gm = GradMixContrastive(encoder, "conv2")
    gm.compile(optimizer="sgd", loss=loss)
    gm.fit(batch[0] if four_d else views(batch), batch[1], epochs=1, verbose=0)


CASES = [
    # ------------------------------------------------------------- options
    Case("attribution", "unknown attribution method", "construction",
         r"attribution must be one of \('gradcam', 'layercam', 'gradcam\+\+'\)", option(attribution="cam")),
    Case("mode", "unknown mode", "construction", r"mode must be one of \('paired', 'replace'\)",
         option(mode="swap")),
    Case("target", "unknown target (not a name or a function)", "construction",
         r"target must be one of \('label', 'prediction', 'loss'\) or a function", option(target="logit")),
    Case("normalize", "unknown normalisation", "construction",
         r"normalize must be one of \('image', 'batch'\)", option(normalize="global")),
    Case("mask", "unknown mask", "construction", r"mask must be one of \('box', 'threshold'\)",
         option(mask="circle")),
    Case("placement", "unknown mask placement", "construction",
         r"placement must be one of \('peak', 'random', 'low'\)", option(placement="centre")),
    Case("border", "unknown box border rule", "construction",
         r"border must be one of \('shift', 'clip'\)", option(border="wrap")),
    Case("auxiliary_positives", "auxiliary positives without masked images as outliers",
         "construction", "needs masked_as='outlier'", option(auxiliary_positives=True)),
    Case("auxiliary-mix", "auxiliary positives with a partner fill or a mixing policy",
         "construction", "no such mask",
         option(masked_as="outlier", auxiliary_positives=True, fill="mix")),
    Case("masked_as", "unknown use of the masked images", "construction",
         r"masked_as must be one of \('positive', 'outlier'\)", option(masked_as="negative")),
    Case("outlier-replace", "masked images as outliers in replace mode", "construction",
         "masked_as='outlier' needs mode='paired'", option(masked_as="outlier", mode="replace")),
    Case("outlier-label_mode", "a label mode for outliers, which keep no label", "construction",
         "with masked_as='outlier' they keep none", option(masked_as="outlier", label_mode="attribution")),
    Case("outlier_weight", "an outlier weight <= 0", "construction", "outlier_weight must be > 0",
         option(masked_as="outlier", outlier_weight=0.0)),
    Case("mask_area-range", "masked area outside 0 < low <= high < 1", "construction",
         "mask_area must satisfy 0 < low <= high < 1", option(mask_area=(0.3, 1.2))),
    Case("mask_area-pair", "masked area not a pair", "construction", "mask_area must be a pair",
         option(mask_area=0.3)),
    Case("beta", "Beta parameters <= 0", "construction", "alpha and beta must be > 0",
         option(beta=-1.0)),
    Case("area_sampling", "unknown area sampling", "construction",
         r"area_sampling must be one of \('batch', 'sample'\)", option(area_sampling="pixel")),
    Case("fill", "unknown fill", "construction", "fill must be 'noise', 'mix', 'shuffle' or a number",
         option(fill="blur")),
    Case("fill-finite", "a constant fill that is not finite", "construction",
         "A constant fill must be a finite number", option(fill=math.inf)),
    Case("label_mode", "unknown label mode", "construction",
         r"label_mode must be one of \('area', 'attribution'\)", option(label_mode="loss")),
    Case("probability", "masking probability outside [0, 1]", "construction",
         r"probability must be in \[0, 1\]", option(probability=1.5)),
    Case("warmup_epochs", "warm-up not a whole number >= 0", "construction",
         "warmup_epochs must be an integer >= 0", option(warmup_epochs=1.5)),
    Case("masked_fraction", "a masked share of the batch of 0", "construction",
         r"masked_fraction must be in \(0, 1\]", option(masked_fraction=0.0)),
    Case("masked_fraction-replace", "a partial masked batch in replace mode", "construction",
         "masked_fraction=0.5 needs mode='paired'", option(masked_fraction=0.5, mode="replace")),
    Case("stop_epoch", "masking stopped before the warm-up ends", "construction",
         r"stop_epoch \(2\) must come after warmup_epochs \(2\)", option(warmup_epochs=2, stop_epoch=2)),
    Case("policy", "a mixing policy with an unknown method", "construction",
         r"policy must map some of \('gradmix', 'cutmix', 'mixup'\)", option(policy={"puzzlemix": 1.0})),
    Case("cutmix_alpha", "a Beta parameter <= 0", "construction", "cutmix_alpha must be > 0",
         option(cutmix_alpha=0.0)),
    Case("value_range", "value range with low >= high", "construction",
         r"value_range must be \(low, high\) with low < high", option(value_range=(1.0, 0.0))),
    Case("normalization", "normalisation that is not (mean, std > 0)", "construction",
         r"normalization must be \(mean, std\)", option(normalization=(0.5, 0.0))),
    Case("bn_statistics", "unknown BatchNorm statistics mode", "construction",
         r"bn_statistics must be one of \('clean', 'all'\)", option(bn_statistics="none")),
    Case("seed", "seed not an int", "construction", "seed must be an int or None", option(seed=1.5)),
    Case("check_inputs", "check_inputs not a bool", "construction",
         "check_inputs must be True or False", option(check_inputs="yes")),
    Case("check_every", "check_every not a whole number >= 0", "construction",
         "check_every must be an integer >= 0", option(check_every=-1)),
    Case("output", "output neither an index nor a name", "construction",
         "output must be None, an output index >= 0 or an output name", option(output=-1)),
    Case("token_grid", "token grid not (height, width)", "construction",
         r"token_grid must be \(height, width\)", option(token_grid=(7,))),
    Case("unknown-option", "a misspelt option", "construction",
         r"Unknown GradMix option\(s\) \['atribution'\]\. Did you mean 'attribution'",
         option(atribution="layercam")),
    # -------------------------------------------------------- models, layers
    Case("not-a-model", "wrapping something that is not a keras.Model", "construction",
         "GradMixModel wraps a keras.Model", lambda b: GradMixModel(keras.layers.Conv2D(2, 3), "conv")),
    Case("layer-type", "layer neither a name, a path, a list nor None", "construction",
         "layer must be a layer name or a '/'-separated path", lambda b: GradMixModel(sequential_cnn(), 3)),
    Case("layer-empty", "an empty list of layers", "construction", "at least one layer",
         lambda b: GradMixModel(sequential_cnn(), [])),
    Case("layer-unknown", "a layer name not in the model", "construction",
         r"No layer 'conv5'.*\['conv1', 'pool', 'conv2'\]", lambda b: GradMixModel(sequential_cnn(), "conv5")),
    Case("layer-off-path", "a functional layer whose output does not reach the model's", "construction",
         "'side' .* is called on the inputs of .* does not reach",
         lambda b: GradMixModel(side_branch_functional(), "side")),
    Case("layer-shape", "a layer whose output is neither a 4-D map nor tokens", "construction",
         r"'gap' has output shape \(None, 8\).*4-D", lambda b: GradMixModel(functional_cnn(), "gap")),
    Case("outputs", "several outputs and no output=", "construction",
         "has 2 outputs; choose the one .* output=", lambda b: GradMixModel(two_heads(), "conv")),
    Case("contrastive-mode", "the contrastive recipe with mode='replace'", "construction",
         r"trains with .*'mode': 'paired'",
         lambda b: GradMixContrastive(sequential_cnn(), "conv2", mode="replace")),
    Case("contrastive-mix", "the contrastive recipe with fill='mix'", "construction", "fill='mix'",
         lambda b: GradMixContrastive(sequential_cnn(), "conv2", fill="mix")),
    Case("contrastive-policy", "the contrastive recipe with a partial batch or a policy",
         "construction", "leave masked_fraction at 1 and policy at None",
         lambda b: GradMixContrastive(sequential_cnn(), "conv2", masked_fraction=0.5)),
    Case("contrastive-outlier", "the contrastive recipe with masked images as outliers",
         "construction", "masked_as='outlier' .* needs a classifier",
         lambda b: GradMixContrastive(sequential_cnn(), "conv2", masked_as="outlier")),
    Case("torch-jit", "jit_compile=True on the PyTorch backend", "compile",
         "GradMix does not run under jit_compile=True on the PyTorch backend",
         lambda b: GradMixModel(sequential_cnn(), "conv2").compile(loss=sparse_ce(), jit_compile=True),
         backends=("torch",)),
    # ---------------------------------------------------------- first batch
    Case("pixels-range", "uint8-style pixels (0-255) with the default value_range (0, 1)", "first batch",
         r"pixels span \[0, 255\] but value_range is \(0, 1\).*value_range=\(0, 255\)",
         lambda b: fit(compiled(layer="conv2"), np.round(255 * b[0]), b[1])),
    Case("pixels-nan", "NaN or inf pixels", "first batch", "1 non-finite pixel values",
         lambda b: fit(compiled(layer="conv2"), with_nan(b[0]), b[1])),
    Case("images-text", "images given as strings", "first batch", "the inputs are strings; decode images",
         lambda b: compiled(layer="conv2").inspect_batch(np.array(["a.png"] * 8), b[1])),
    Case("labels-high", "class indices >= the number of outputs", "first batch",
         r"labels must be class indices in \[0, 10\).* from 0 to 12",
         lambda b: fit(compiled(layer="conv2"), b[0], np.where(b[1] == b[1][0], 12, 0))),
    Case("labels-negative", "negative class indices", "first batch",
         r"labels must be class indices in \[0, 10\).* negative labels \(down to -1\).* start at 0",
         lambda b: fit(compiled(layer="conv2"), b[0], b[1] - b[1].min() - 1)),
    Case("labels-onehot-sparse-loss", "one-hot labels with a sparse loss", "first batch",
         r"labels are one-hot \(shape \(8, 10\)\) but the loss is sparse_categorical_crossentropy"
         r".*CategoricalCrossentropy.*argmax",
         lambda b: fit(compiled(layer="conv2"), b[0], np.eye(10, dtype="float32")[b[1]])),
    Case("labels-sparse-onehot-loss", "class indices with a one-hot loss", "first batch",
         r"labels are class indices .* but the loss is categorical_crossentropy.*SparseCategorical",
         lambda b: fit(compiled(layer="conv2", loss=keras.losses.CategoricalCrossentropy(from_logits=True)),
                       *b)),
    Case("pixels-standardised", "standardised pixels (mean 0, std 1) without normalization=",
         "first batch", r"pixels span \[-2.*look standardised.*normalization=\(\(0.485",
         lambda b: fit(compiled(layer="conv2"), (b[0] - 0.5) / 0.2, b[1])),
    Case("data-empty", "zero-length arrays", "first batch", "the data has no images",
         lambda b: compiled(layer="conv2").fit(b[0][:0], b[1][:0], epochs=1, verbose=0)),
    Case("dataset-empty", "an empty dataset", "first batch", r"training data \(.*\) is empty",
         lambda b: compiled(layer="conv2").fit(iter([]), epochs=1, verbose=0)),
    Case("labels-text", "string labels", "first batch",
         "the labels are strings; map them to integer class indices.*StringLookup",
         lambda b: fit(compiled(layer="conv2"), b[0], np.array([f"class{i}" for i in b[1]]))),
    Case("labels-onehot-range", "one-hot labels outside [0, 1]", "first batch",
         r"one-hot \(or soft, or multi-hot\) labels must lie in \[0, 1\]",
         lambda b: fit(compiled(layer="conv2", loss=keras.losses.CategoricalCrossentropy(from_logits=True)),
                       b[0], 2.0 * np.eye(10, dtype="float32")[b[1]])),
    Case("sample-weights", "negative sample weights", "first batch",
         r"sample weights must be finite and >= 0",
         lambda b: fit(compiled(layer="conv2"), *b, sample_weight=-np.ones(len(b[1]), "float32"))),
    # ----------------------------------------------------------- first step
    Case("labels-shape", "labels that fit neither sparse nor one-hot", "first batch", "fit neither sparse",
         lambda b: fit(compiled(layer="conv2"), b[0], np.zeros((8, 3), "float32"))),
    Case("images-rank", "inputs that are not images (batch, height, width, channels), sequences "
         "(batch, steps, channels), volumes (batch, depth, height, width, channels) or integer "
         "token ids (batch, tokens)", "first batch",
         r"images of shape \(batch, height, width, channels\).*or sequences \(batch, steps, channels\)",
         lambda b: fit(compiled(keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])),
                       np.zeros((4, 16), "float32"), np.zeros(4, "int32"))),
    Case("token-fill", "token ids with a fill that is not an id (the default noise, a partner's "
         "tokens, a fraction)", "first batch",
         r"fill='noise' draws pixel values; token ids are replaced by an id: pass fill=<id>",
         lambda b: fit(compiled(text_model(), layer="conv"), *text_batch())),
    Case("token-negative", "negative token ids", "first batch", r"negative token ids \(down to -1\)",
         lambda b: fit(compiled(text_model(), layer="conv", fill=1), text_batch()[0] - 1,
                       text_batch()[1])),
    Case("token-unselectable", "unselectable_token_ids that are not ids >= 0", "construction",
         r"unselectable_token_ids must be a list of token ids >= 0",
         lambda b: GradMixModel(text_model(), "conv", unselectable_token_ids=["pad"])),
    Case("sequence-layer", "a sequence model's layer whose output does not run over the steps",
         "first batch", r"Layer 'c' returned \(8, 12, 2, 2\); GradMix needs one \(batch, steps, "
                        r"channels\) sequence output",
         lambda b: fit(compiled(keras.Sequential([
             keras.Input((12, 2)), keras.layers.Reshape((12, 2, 1)), keras.layers.Conv2D(2, 1, name="c"),
             keras.layers.Reshape((12, 4)), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)]),
             layer="c"), np.zeros((8, 12, 2), "float32") + np.arange(12, dtype="float32")[:, None] / 12,
             np.zeros(8, "int32"))),
    Case("layer-shape-subclassed", "a subclassed model's layer whose output is not a map", "first batch",
         r"'gap' returned \(8, 8\).*4-D", lambda b: fit(compiled(subclassed_cnn(), layer="gap"), *b)),
    Case("outputs-subclassed", "a subclassed model with several outputs and no output=", "first batch",
         "has 2 outputs .*output=", lambda b: fit(compiled(built(TwoOutputs, b), layer="conv2"), *b)),
    Case("layer-1x1", "a layer whose maps are 1x1 at the input size (ResNet50's last stage at 32x32)",
         "first batch", r"Layer 'last' gives 1x1 maps at 28x28 inputs.*The last layer whose maps are "
                        r"larger is 'pool' \(2x2\)",
         lambda b: fit(compiled(keras.Sequential([
             keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, padding="same", name="conv"),
             keras.layers.MaxPooling2D(14, name="pool"), keras.layers.Conv2D(4, 2, name="last"),
             keras.layers.Flatten(), keras.layers.Dense(10)]), layer="last"), *b)),
    Case("layer-twice", "a layer that runs twice in one forward", "first batch", "ran 2 times",
         lambda b: fit(compiled(built(Twice, b), layer="conv1"), *b)),
    Case("layer-unused", "a subclassed model's layer whose output is unused", "first batch",
         "does not depend on layer 'conv2'", lambda b: fit(compiled(built(SideBranch, b), layer="conv2"), *b)),
    Case("no-loss", "compile() without a loss", "first step", "compile it with one",
         lambda b: fit(_no_loss(), *b)),
    Case("no-spatial-layer", "layer=None on a model without a spatial feature map", "first batch",
         "No layer of .* has a 4-D",
         lambda b: fit(compiled(keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                                 keras.layers.Dense(3)]), check_inputs=False),
                       np.zeros((2, 4, 4, 1), "float32"), np.zeros(2, "int32"))),
    Case("token-grid", "transformer tokens with no patch grid", "first batch", "No patch grid fits",
         lambda b: fit(compiled(keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Reshape((49, 16)),
                                                 keras.layers.Dense(8, name="mix"),
                                                 keras.layers.Lambda(lambda t: t[:, :34], name="tokens"),
                                                 keras.layers.GlobalAveragePooling1D(),
                                                 keras.layers.Dense(10)]), layer="tokens"), *b)),
    Case("contrastive-views", "contrastive training on single images, not (batch, 2, ...) views",
         "first batch", r"two views per image, shape \(batch, 2",
         lambda b: contrastive_fit(b, four_d=True)),
    Case("contrastive-loss", "contrastive training compiled with a loss", "first step",
         "compile with an optimizer only", lambda b: contrastive_fit(b, loss="mse")),
    Case("outlier-loss", "masked images as outliers with a loss that does not say logits or "
         "probabilities", "first step", "must know whether the model outputs logits",
         lambda b: fit(compiled(layer="conv2", masked_as="outlier",
                                loss=lambda y, p: keras.ops.mean(p) * 0.0), *b)),
    Case("outlier-binary", "masked images as outliers for a single-logit classifier",
         "first step", "masked_as='outlier' needs one output per class",
         lambda b: fit(compiled(sequential_cnn(classes=1), layer="conv2", masked_as="outlier",
                                loss=keras.losses.BinaryCrossentropy(from_logits=True)),
                       b[0], (b[1] % 2).astype("float32"))),
    # -------------------------------------------------------------- training
    Case("nonfinite-loss", "a loss term that is not finite", "training",
         r"the loss is not finite at epoch 0, batch 0: the masked term", nan_in_the_masked_pass,
         error=FloatingPointError),
    Case("nan-later", "a NaN pixel in a batch after the first", "training",
         r"the inputs are not finite at epoch 0, batch 1.*No update was applied from that batch "
         r"on.*fit stopped",
         lambda b: fit(compiled(layer="conv2"), _spoiled(b[0], np.nan), b[1], batch_size=4),
         error=FloatingPointError),
    Case("label-later", "a label outside the classes in a batch after the first", "training",
         r"labels at epoch 0, batch 1 are not classes of the model",
         lambda b: fit(compiled(layer="conv2"), b[0], _spoiled(b[1], 12), batch_size=4)),
    Case("train_on_batch-nan", "a NaN pixel in a later train_on_batch call", "training",
         r"the inputs are not finite in this train_on_batch batch.*No update was applied: the "
         r"weights and the optimizer state are those before the call",
         lambda b: _twice(b, x=_spoiled(b[0], np.nan)), error=FloatingPointError),
    # ------------------------------------------------------------ later calls
    Case("train_on_batch-onehot", "one-hot labels with a sparse loss in a later train_on_batch "
         "call", "later call", r"labels are one-hot \(shape \(8, 10\)\) but the loss is sparse",
         lambda b: _twice(b, y=np.eye(10, dtype="float32")[b[1]])),
    Case("train_on_batch-label", "a class index >= the number of outputs in a later "
         "train_on_batch call", "later call",
         r"class indices in \[0, 10\).*this train_on_batch batch has labels from 0 to 12",
         lambda b: _twice(b, y=_spoiled(b[1], 12))),
    # ----------------------------------------------------------------- calls
    Case("maps-labels", "attribution_maps with labels that are not classes of the model", "call",
         r"labels must be class indices in \[0, 10\).*\[12\].*no class",
         lambda b: keras_gradmix.attribution_maps(sequential_cnn(), b[0], _spoiled(b[1], 12), "conv2")),
    Case("maps-option", "attribution_maps with an option that is not an attribution setting", "call",
         r"attribution_maps got unknown option\(s\) \['mask_area'\]",
         lambda b: keras_gradmix.attribution_maps(sequential_cnn(), b[0], b[1], "conv2", mask_area=(0.1, 0.2))),
    Case("ece-percentages", "ece() of percentages", "call",
         r"confidences must be probabilities in \[0, 1\].*percentages",
         lambda b: osr.ece(np.linspace(50, 100, 8), np.ones(8, bool))),
    Case("aurc-labels", "aurc() with class labels as `correct`", "call",
         r"correct must say, per sample, whether the prediction was right.*class labels",
         lambda b: osr.aurc(np.linspace(0, 1, 8), b[1] + 2)),
    Case("per-class-score", "per_class_metrics of a score never computed", "call",
         r"score 'energy' was not computed; these were: \['mls'\]",
         lambda b: osr.per_class_metrics({"known": {"mls": np.zeros(2)}, "known_true": np.zeros(2),
                                          "known_pred": np.zeros(2)}, "energy")),
]


def _twice(batch, x=None, y=None):
    """train_on_batch on a good batch, then on ``(x, y)`` (the good ones by default)."""
    gm = compiled(layer="conv2")
    gm.train_on_batch(*batch)
    gm.train_on_batch(batch[0] if x is None else x, batch[1] if y is None else y)


def _spoiled(values, bad):
    """A copy with item 6 (in the second batch of 4) set to ``bad``."""
    values = np.array(values, dtype=np.float32 if isinstance(bad, float) else values.dtype)
    values[6] = bad
    return values


def _no_loss():
    gm = GradMixModel(sequential_cnn(), "conv2")
    gm.compile(optimizer="sgd")
    return gm


def markdown() -> str:
    lines = [
        "# Errors: every bad input keras_gradmix checks", "",
        "Each row is run by `tests/test_errors.py` on TensorFlow, JAX and PyTorch (the "
        "message is the same on each); this page is written from that table by "
        "`python tests/error_table.py > docs/errors.md`. Where:", "",
        *[f"- **{key}**: {text}" for key, text in WHERE.items()], "",
        f"{len(CASES)} checks, {sum(c.where == 'construction' for c in CASES)} at construction. "
        "Warnings (not errors): every attribution map of the chosen layer flat on the first "
        "batch (nothing would be masked; the layer to use instead is named), soft labels "
        "whose rows do not sum to 1. `check_inputs=False` skips the first-batch checks and "
        "the training check of finite inputs.", "",
        "| # | bad input | where | error | message (pattern) |", "|---|---|---|---|---|",
    ]
    for number, case in enumerate(CASES, 1):
        pattern = case.match.replace("|", "\\|")
        lines.append(f"| {number} | {case.bad} | {case.where} | `{case.error.__name__}` | `{pattern}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
