"""GradMixModel: wraps any Keras classifier and trains it with GradMix."""

from __future__ import annotations

import contextlib
import logging

import keras
from keras import ops

from keras_gradmix import attribution, masks, mixing
from keras_gradmix.tap import (
    LayerTap,
    graph_output_shape,
    image_layer_paths,
    iter_layers,
    resolve_layer,
)

logger = logging.getLogger("keras_gradmix")

MODES = ("paired", "replace")
BN_STATISTICS = ("clean", "all")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="keras_gradmix")
class GradMixModel(keras.Model):
    """Trains ``model`` with GradMix: masks what the model already attends to.

    At every training step the clean batch is forwarded, the gradient of a
    score (by default the ground-truth class output) with respect to the output
    of ``layer`` gives a Grad-CAM map per image, and a box centred on each
    map's peak is filled with noise (or a constant, or a partner image). The
    model is then trained on the masked batch, besides (``mode="paired"``) or
    instead of (``mode="replace"``) the clean one. The attribution reuses the
    clean forward pass and never reaches the optimizer; metrics are computed on
    the clean predictions. Inference (``predict``, ``evaluate``, ``__call__``)
    is exactly the wrapped model's.

    Args:
        model: a built or unbuilt Keras classifier with one image input
            ``(B, H, W, C)`` (channels last) and one output ``(B, K)``:
            functional, Sequential or subclassed.
        layer: name of the layer whose output is attributed, or a
            "/"-separated path into nested models ("backbone/conv5_block3_out").
            None picks the last layer (in call order) with a 4-D output, and
            logs which.
        mode: ``"paired"`` (paper): loss = L(clean) + w * L(masked), with w
            the kept-area fraction per sample; ``"replace"``: train on the
            masked batch only.
        target: score whose gradient is attributed: ``"label"`` (output at the
            true class), ``"prediction"`` (at the arg-max class) or ``"loss"``
            (the clean loss, as the reference code; highlights what raises it).
        normalize: ``"image"`` (each map to [0, 1]) or ``"batch"`` (one min-max
            over the batch, as the reference code).
        mask_area: ``(low, high)`` range of the masked fraction of the image.
        alpha, beta: the masked fraction is ``high - (high - low) * u`` with
            ``u ~ Beta(alpha, beta)``, i.e. the paper's
            ``lam = 0.5 + 0.4 * Beta(alpha, beta)`` for the default range.
        fill: ``"noise"`` (uniform in ``value_range``, one value per pixel
            shared by channels, as the paper's code), ``"mix"`` (the box of a
            partner image from the shuffled batch; labels mixed by area) or a
            number (a constant).
        value_range: ``(low, high)`` of the input images, used for the noise.
        bn_statistics: ``"clean"``: BatchNorm running statistics are updated
            once per step, from the clean batch (the masked pass uses its own
            batch statistics, its moving-average updates are discarded);
            ``"all"``: every pass updates them, as the reference code.
        seed: int for reproducible masks.

    The masked batch enters the compiled loss through sample weights: with
    ``fill="noise"`` or a constant, ``w * L(masked, y)``; with ``fill="mix"``,
    ``lam * L(masked, y) + (1 - lam) * L(masked, y_partner)``, lam the kept
    fraction, so any Keras loss (sparse or one-hot) works. Box areas are the
    real, border-clipped ones.

    Example:

    ```python
    import numpy as np
    x_train = np.random.rand(64, 28, 28, 1).astype("float32")  # images in [0, 1]
    y_train = np.random.randint(0, 10, 64)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    gm = GradMixModel(model, layer="conv", seed=0)
    gm.compile(optimizer="adam",
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    gm.fit(x_train, y_train, epochs=1)
    gm.model.save("plain.keras")          # the wrapped model, GradMix-free
    ```
    """

    def __init__(
        self,
        model: keras.Model,
        layer: str | None = None,
        *,
        mode: str = "paired",
        target: str = "label",
        normalize: str = "image",
        mask_area: tuple[float, float] = (0.1, 0.5),
        alpha: float = 1.0,
        beta: float = 1.0,
        fill: str | float = "noise",
        value_range: tuple[float, float] = (0.0, 1.0),
        bn_statistics: str = "clean",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"GradMixModel wraps a keras.Model, got {type(model).__name__}."
            )
        outputs = getattr(model, "outputs", None)
        if outputs is not None and len(outputs) != 1:
            raise ValueError(
                f"GradMixModel needs a model with one output (class scores), "
                f"{model.name!r} has {len(outputs)}."
            )
        self.model = model
        self.layer = layer
        if layer is not None:
            shape = graph_output_shape(resolve_layer(model, layer))
            if shape is not None and len(shape) != 4:
                raise ValueError(
                    f"Layer {layer!r} has output shape {shape}; GradMix needs a 4-D "
                    f"(batch, height, width, channels) feature map. Candidates: "
                    f"{image_layer_paths(model)}."
                )
        self.mode = _check_choice("mode", mode, MODES)
        self.target = _check_choice("target", target, attribution.TARGETS)
        self.normalize = _check_choice("normalize", normalize, attribution.NORMALIZATIONS)
        self.mask_area = masks.validate_mask_area(mask_area)
        self.alpha, self.beta = masks.validate_beta(alpha, beta)
        self.fill = mixing.validate_fill(fill)
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}.")
        self.value_range = (low, high)
        self.bn_statistics = _check_choice("bn_statistics", bn_statistics, BN_STATISTICS)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    # ---------------------------------------------------------------- inference
    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    # ------------------------------------------------------------ train step
    def train_step(self, *args, **kwargs):
        backend = keras.backend.backend()
        if backend == "tensorflow":
            from keras_gradmix.steps.tensorflow import train_step
        else:
            raise NotImplementedError(
                f"GradMixModel trains with the TensorFlow backend for now; "
                f"KERAS_BACKEND is {backend!r}. Set KERAS_BACKEND=tensorflow."
            )
        return train_step(self, *args, **kwargs)

    def tap(self, on_output=None) -> LayerTap:
        """A :class:`LayerTap` on the attributed layer (on every layer if ``layer=None``
        is still unresolved; :meth:`tapped_activation` then picks one)."""
        if self.layer is not None:
            layers = {self.layer: resolve_layer(self.model, self.layer)}
        else:
            layers = dict(iter_layers(self.model))
        return LayerTap(layers, on_output)

    def tapped_activation(self, tap: LayerTap):
        """The attributed layer's output from one clean forward, checked."""
        if self.layer is None:
            self.layer = self._pick_last_image_layer(tap)
        outputs = tap.outputs[self.layer]
        if len(outputs) != 1:
            raise ValueError(
                f"Layer {self.layer!r} ran {len(outputs)} times in one forward pass "
                f"of {self.model.name!r}; GradMix needs a layer that runs exactly once."
            )
        activation = outputs[0]
        if not ops.is_tensor(activation) or len(activation.shape) != 4:
            shape = getattr(activation, "shape", type(activation).__name__)
            raise ValueError(
                f"Layer {self.layer!r} returned {shape}; GradMix needs one 4-D "
                f"(batch, height, width, channels) feature map. Choose a "
                f"convolutional layer, or layer=None for the last 4-D one."
            )
        return activation

    def _pick_last_image_layer(self, tap: LayerTap) -> str:
        four_d = [
            path
            for path in tap.order
            if len(tap.outputs[path]) == 1
            and ops.is_tensor(tap.outputs[path][0])
            and len(tap.outputs[path][0].shape) == 4
        ]
        if not four_d:
            raise ValueError(
                f"No layer of {self.model.name!r} has a 4-D (batch, height, width, "
                f"channels) output; GradMix attributes a convolutional feature map."
            )
        logger.info("GradMix attributes the output of layer %r (layer=None).", four_d[-1])
        return four_d[-1]

    def attribution_target(self, y_onehot, y_pred, clean_loss):
        """Scalar whose gradient w.r.t. the layer output gives the attribution."""
        if self.target == "loss":
            score = clean_loss
        else:
            score = ops.sum(attribution.target_scores(y_onehot, y_pred, self.target))
        # Maps are invariant to a positive scale; scaling by the loss scale keeps
        # float16 gradients from underflowing under mixed precision.
        return self.optimizer.scale_loss(score) if self.optimizer is not None else score

    def masked_batch(self, images, activation, gradient):
        """Masks each image at its attribution peak.

        Returns ``(masked_images, kept, partner)``: kept is the (B,) kept-area
        fraction, partner the (B,) partner indices for ``fill="mix"`` or None.
        Everything is a constant for the update (gradients stopped).
        """
        images = ops.convert_to_tensor(images)
        batch = ops.shape(images)[0]
        maps = attribution.attribution_maps(
            activation, gradient, images.shape[1:3], self.normalize
        )
        area = masks.sample_mask_area(
            (), self.mask_area, self.alpha, self.beta, seed=self.seed_generator
        )
        mask, masked = masks.box_masks(maps, area)
        partner = (
            mixing.random_partner(batch, seed=self.seed_generator)
            if self.fill == "mix"
            else None
        )
        filled = mixing.apply_fill(
            images,
            mask,
            self.fill,
            value_range=self.value_range,
            partner=partner,
            seed=self.seed_generator,
        )
        return ops.stop_gradient(filled), ops.stop_gradient(1.0 - masked), partner

    def gradmix_loss(self, x, y, clean_loss, y_masked, sample_weight, kept, partner):
        """Total loss of a step (see the class docstring)."""

        def weighted(w):
            return w if sample_weight is None else w * ops.cast(sample_weight, "float32")

        if self.fill == "mix":
            own, other = weighted(kept), weighted(1.0 - kept)
        elif self.mode == "paired":
            own, other = weighted(kept), None
        else:  # replace, noise or constant: the masked sample keeps its label
            own, other = sample_weight, None
        if self.mode == "paired":
            loss = clean_loss + self._compiled_loss(y, y_masked, own)
        else:  # regularisation losses enter once, here
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_masked, sample_weight=own, training=True
            )
        if other is not None:
            loss = loss + self._compiled_loss(ops.take(y, partner, axis=0), y_masked, other)
        return loss

    def _compiled_loss(self, y, y_pred, sample_weight):
        # The compiled loss alone: regularisation losses are added once per step.
        return self._compile_loss(y, y_pred, sample_weight)

    @contextlib.contextmanager
    def masked_pass_statistics(self):
        """Context for the masked forward: with ``bn_statistics="clean"`` the
        BatchNorm moving statistics it writes are put back afterwards."""
        if self.bn_statistics == "all":
            yield
            return
        variables = [
            v
            for layer in self.model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        saved = [ops.copy(v) for v in variables]  # a snapshot, not the variable
        yield
        for variable, value in zip(variables, saved):
            variable.assign(value)

    # ---------------------------------------------------------------- checks
    def labels_as_onehot(self, y, y_pred):
        """Sparse ``(B,)``/``(B, 1)`` or one-hot ``(B, K)`` labels as float one-hot."""
        if isinstance(y_pred, (list, tuple, dict)):
            raise ValueError(
                f"GradMixModel needs a model with one output (class scores); "
                f"{self.model.name!r} returned {type(y_pred).__name__} of "
                f"{len(y_pred)} outputs."
            )
        if len(y_pred.shape) != 2:
            raise ValueError(
                f"GradMixModel needs class scores of shape (batch, classes); "
                f"{self.model.name!r} returned shape {tuple(y_pred.shape)}."
            )
        classes = y_pred.shape[-1]
        if classes == 1 and self.target != "loss":
            raise ValueError(
                f"target={self.target!r} needs class scores (batch, classes >= 2); "
                f"{self.model.name!r} has a single output unit. Use target='loss', "
                f"or a 2-unit softmax output."
            )
        if isinstance(y, (list, tuple, dict)) or y is None:
            raise ValueError(
                "GradMixModel needs one label tensor per batch, (x, y) or "
                f"(x, y, sample_weight); got y of type {type(y).__name__}."
            )
        y = ops.convert_to_tensor(y)
        shape = tuple(y.shape)
        if len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1 and classes != 1):
            return ops.one_hot(ops.cast(ops.reshape(y, (-1,)), "int32"), classes)
        if len(shape) == 2 and shape[-1] == classes:
            return ops.cast(y, "float32")
        raise ValueError(
            f"Labels of shape {shape} fit neither sparse class indices (batch,) or "
            f"(batch, 1) nor one-hot (batch, {classes}) for a model with {classes} "
            f"outputs."
        )

    def check_images(self, x):
        if isinstance(x, (list, tuple, dict)):
            raise ValueError(
                "GradMixModel needs a single image input (batch, height, width, "
                f"channels); got {type(x).__name__}."
            )
        if len(x.shape) != 4:
            raise ValueError(
                f"GradMixModel needs images of shape (batch, height, width, "
                f"channels), channels last; got shape {tuple(x.shape)}."
            )
        if x.shape[1] is None or x.shape[2] is None:
            raise ValueError(
                f"GradMixModel needs batches whose image height and width are "
                f"known when the step is traced; got shape {tuple(x.shape)}. "
                f"Resize images to one size (or set the dataset's element_spec)."
            )

    def check_compiled(self):
        if getattr(self, "_compile_loss", None) is None:
            raise ValueError(
                "GradMixModel trains with the loss given to compile(); compile it "
                "with one, e.g. loss='sparse_categorical_crossentropy'."
            )

    # ---------------------------------------------------------------- config
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "layer": self.layer,
            "mode": self.mode,
            "target": self.target,
            "normalize": self.normalize,
            "mask_area": list(self.mask_area),
            "alpha": self.alpha,
            "beta": self.beta,
            "fill": self.fill,
            "value_range": list(self.value_range),
            "bn_statistics": self.bn_statistics,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)
