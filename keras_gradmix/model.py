"""GradMixModel: wraps any Keras classifier and trains it with GradMix."""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple, Sequence

import keras
from keras import ops

from keras_gradmix import attribution as cams
from keras_gradmix import masks, mixing
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
AREA_SAMPLING = ("batch", "sample")
LABEL_MODES = ("area", "attribution")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value


class MaskedBatch(NamedTuple):
    """What one step trains on besides (or instead of) the clean batch.

    All (B, ...) tensors, constants for the update: ``images`` (masked and
    filled), ``maps`` (B, H, W) attribution in [0, 1], ``mask`` (B, H, W) bool,
    ``own`` the weight of each image's own label, ``pasted`` the weight of the
    partner's label (``fill="mix"``, else None), ``partner`` indices or None,
    ``applied`` (B,) bool, whether each sample was masked: not when it was not
    drawn (``probability``, ``warmup_epochs``) or its map is flat (no peak).
    """

    images: object
    maps: object
    mask: object
    own: object
    pasted: object
    partner: object
    applied: object


class _EpochCounter(keras.callbacks.Callback):
    # Feeds the epoch to the compiled step (for warmup_epochs) without retracing.
    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


@keras.saving.register_keras_serializable(package="keras_gradmix")
class GradMixModel(keras.Model):
    """Trains ``model`` with GradMix: masks what the model already attends to.

    At every training step the clean batch is forwarded, the gradient of a
    score (by default the ground-truth class output) with respect to the output
    of ``layer`` gives an attribution map per image (Grad-CAM by default), and
    a box centred on each map's peak (or the top-attribution pixels) is filled
    with noise (or a constant, or a partner image). The
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
            "/"-separated path into nested models ("backbone/conv5_block3_out"),
            or a list of them: each layer's map is normalised, upsampled and the
            maps summed (the reference code's multi-layer map). None picks the
            last layer (in call order) with a 4-D output, and logs which.
        attribution: ``"gradcam"``, ``"layercam"`` (sum_c A * ReLU(grad), the
            reference code's form) or ``"gradcam++"``.
        mode: ``"paired"`` (paper): loss = L(clean) + w * L(masked), with w
            the kept-area fraction per sample; ``"replace"``: train on the
            masked batch only.
        target: score whose gradient is attributed: ``"label"`` (output at the
            true class), ``"prediction"`` (at the arg-max class) or ``"loss"``
            (the clean loss, as the reference code; highlights what raises it).
        normalize: ``"image"`` (each map to [0, 1]) or ``"batch"`` (one min-max
            over the batch, as the reference code).
        mask: ``"box"``: a box with the image's aspect ratio centred on the
            map's peak, clipped at the border; ``"threshold"``: the
            highest-attribution pixels covering the sampled area.
        mask_area: ``(low, high)`` range of the masked fraction of the image.
        alpha, beta: the masked fraction is ``high - (high - low) * u`` with
            ``u ~ Beta(alpha, beta)``, i.e. the paper's
            ``lam = 0.5 + 0.4 * Beta(alpha, beta)`` for the default range.
        area_sampling: ``"batch"``: one area per batch (reference code);
            ``"sample"``: one per image.
        fill: ``"noise"`` (uniform in ``value_range``, one value per pixel
            shared by channels, as the paper's code), ``"mix"`` (the box of a
            partner image from the shuffled batch; labels mixed by area) or a
            number (a constant).
        label_mode: weight of each masked image's own label (and, with
            ``fill="mix"``, of its partner's): ``"area"``, the kept (pasted)
            area fraction; ``"attribution"``, the kept (pasted) share of the
            attribution mass, as SnapMix.
        probability: each sample is masked with this probability; the others
            stay clean (in paired mode their masked term gets weight 0). An
            image whose map is flat (no positive attribution) stays clean too.
        warmup_epochs: no masking during the first ``k`` epochs of ``fit``
            (the attribution of an untrained model is noise); a variable, so
            the compiled step is not retraced.
        value_range: ``(low, high)`` of the input images, used for the noise.
        bn_statistics: ``"clean"``: BatchNorm running statistics are updated
            once per step, from the clean batch (the masked pass uses its own
            batch statistics, its moving-average updates are discarded);
            ``"all"``: every pass updates them, as the reference code.
        seed: int for reproducible masks.

    The masked batch enters the compiled loss through sample weights: with
    ``fill="noise"`` or a constant, ``w * L(masked, y)`` (paired) or
    ``L(masked, y)`` (replace); with ``fill="mix"``,
    ``w * L(masked, y) + w_p * L(masked, y_partner)``, where ``w`` and ``w_p``
    are the kept and pasted shares (``label_mode``), so any Keras loss (sparse
    or one-hot) works. Areas are the real, border-clipped ones. Attribution
    maths runs in float32 under any dtype policy, and the score is multiplied
    by the loss scale under ``mixed_float16`` so its gradient does not
    underflow (maps are invariant to a positive scale).

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
        layer: str | Sequence[str] | None = None,
        *,
        attribution: str = "gradcam",
        mode: str = "paired",
        target: str = "label",
        normalize: str = "image",
        mask: str = "box",
        mask_area: tuple[float, float] = (0.1, 0.5),
        alpha: float = 1.0,
        beta: float = 1.0,
        area_sampling: str = "batch",
        fill: str | float = "noise",
        label_mode: str = "area",
        probability: float = 1.0,
        warmup_epochs: int = 0,
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
        if isinstance(layer, (list, tuple)):
            if not layer:
                raise ValueError("layer must name at least one layer, got [].")
            layer = list(layer)
        self.layer = layer
        for path in self.layer_paths or ():
            shape = graph_output_shape(resolve_layer(model, path))
            if shape is not None and len(shape) != 4:
                raise ValueError(
                    f"Layer {path!r} has output shape {shape}; GradMix needs a 4-D "
                    f"(batch, height, width, channels) feature map. Candidates: "
                    f"{image_layer_paths(model)}."
                )
        self.attribution = _check_choice("attribution", attribution, tuple(cams.METHODS))
        self.mode = _check_choice("mode", mode, MODES)
        self.target = _check_choice("target", target, cams.TARGETS)
        self.normalize = _check_choice("normalize", normalize, cams.NORMALIZATIONS)
        self.mask = _check_choice("mask", mask, tuple(masks.MASKS))
        self.mask_area = masks.validate_mask_area(mask_area)
        self.alpha, self.beta = masks.validate_beta(alpha, beta)
        self.area_sampling = _check_choice("area_sampling", area_sampling, AREA_SAMPLING)
        self.fill = mixing.validate_fill(fill)
        self.label_mode = _check_choice("label_mode", label_mode, LABEL_MODES)
        if isinstance(probability, bool) or not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability!r}.")
        self.probability = float(probability)
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}.")
        self.warmup_epochs = int(warmup_epochs)
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}.")
        self.value_range = (low, high)
        self.bn_statistics = _check_choice("bn_statistics", bn_statistics, BN_STATISTICS)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.epoch = keras.Variable(0, dtype="int32", trainable=False, name="gradmix_epoch")

    @property
    def layer_paths(self) -> list[str] | None:
        """The attributed layer paths, or None while ``layer=None`` is unresolved."""
        if self.layer is None:
            return None
        return list(self.layer) if isinstance(self.layer, list) else [self.layer]

    # ---------------------------------------------------------------- inference
    def call(self, inputs, training=None):
        outputs = self.model(inputs, training=training)
        if isinstance(outputs, (list, tuple, dict)):
            raise ValueError(
                f"GradMixModel needs a model with one output (class scores); "
                f"{self.model.name!r} returned {type(outputs).__name__} of "
                f"{len(outputs)} outputs."
            )
        return outputs

    # ------------------------------------------------------------ train step
    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, plus a callback that tells the step the epoch."""
        args = list(args)
        if len(args) > 5:  # callbacks passed positionally
            args[5] = [*(args[5] or []), _EpochCounter(self.epoch)]
        else:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _EpochCounter(self.epoch)]
        return super().fit(*args, **kwargs)

    def train_step(self, *args, **kwargs):
        return _backend_step().train_step(self, *args, **kwargs)

    def preview(self, images, labels, seed: int = 0) -> MaskedBatch:
        """What training would do to ``images`` now: maps, masks, trained images.

        Runs eagerly in inference mode (BatchNorm uses its running statistics)
        with its own seed, so it changes neither the model nor the training RNG.
        """
        images = self.prepare_inputs(images)
        activations, gradients = _backend_step().attribute(self, images, labels)
        return self.masked_batch(
            images, activations, gradients, seed=keras.random.SeedGenerator(seed)
        )

    def tap(self, on_output=None) -> LayerTap:
        """A :class:`LayerTap` on the attributed layers (on every layer while
        ``layer=None`` is unresolved; :meth:`tapped_activations` then picks one)."""
        paths = self.layer_paths
        if paths is None:
            return LayerTap(dict(iter_layers(self.model)), on_output)
        return LayerTap({p: resolve_layer(self.model, p) for p in paths}, on_output)

    def tapped_activations(self, tap: LayerTap) -> list:
        """The attributed layers' outputs from one clean forward, checked."""
        if self.layer is None:
            self.layer = self._pick_last_image_layer(tap)
        activations = []
        for path in self.layer_paths:
            outputs = tap.outputs[path]
            if len(outputs) != 1:
                raise ValueError(
                    f"Layer {path!r} ran {len(outputs)} times in one forward pass of "
                    f"{self.model.name!r}; GradMix needs a layer that runs exactly once."
                )
            activation = outputs[0]
            if not ops.is_tensor(activation) or len(activation.shape) != 4:
                shape = getattr(activation, "shape", None)
                shape = type(activation).__name__ if shape is None else tuple(shape)
                raise ValueError(
                    f"Layer {path!r} returned {shape}; GradMix needs one 4-D "
                    f"(batch, height, width, channels) feature map. Choose a "
                    f"convolutional layer, or layer=None for the last 4-D one."
                )
            activations.append(activation)
        return activations

    def check_reaches_output(self, reaches: Sequence[bool]):
        """Raises for an attributed layer whose output does not reach the model's."""
        for path, reached in zip(self.layer_paths, reaches):
            if not reached:
                raise ValueError(
                    f"The output of {self.model.name!r} does not depend on layer "
                    f"{path!r}; attribute a layer on the path to the output."
                )

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

    # ------------------------------------------------ hooks of the backend steps
    # The steps in keras_gradmix/steps/ call these; an objective other than the
    # compiled loss (e.g. keras_gradmix.contrastive) overrides them.
    def prepare_inputs(self, x):
        """The image batch the step forwards (identity here)."""
        return x

    def clean_loss(self, x, y, y_pred, sample_weight, training=True):
        """Loss of the clean batch: the compiled loss (and regularisers)."""
        self.check_compiled()
        return self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def attribution_score(self, y, y_pred, clean_loss):
        """Scalar whose gradient w.r.t. the attributed layers gives the maps."""
        return self.attribution_target(self.labels_as_onehot(y, y_pred), y_pred, clean_loss)

    def attribution_target(self, y_onehot, y_pred, clean_loss):
        """Scalar whose gradient w.r.t. the layer outputs gives the attribution."""
        if self.target == "loss":
            score = clean_loss
        else:
            score = ops.sum(cams.target_scores(y_onehot, y_pred, self.target))
        # Maps are invariant to a positive scale; scaling by the loss scale keeps
        # float16 gradients from underflowing under mixed precision.
        optimizer = getattr(self, "optimizer", None)  # absent before compile()
        return score if optimizer is None else optimizer.scale_loss(score)

    def masked_batch(self, images, activations, gradients, seed=None) -> MaskedBatch:
        """Masks each image where it is attributed and fills the mask.

        ``activations``/``gradients``: one tensor or a list per layer. ``seed``
        defaults to the model's own generator.
        """
        seed = self.seed_generator if seed is None else seed
        images = ops.convert_to_tensor(images)
        batch = ops.shape(images)[0]
        maps = cams.attribution_maps(
            activations, gradients, images.shape[1:3], self.attribution, self.normalize
        )
        area = masks.sample_mask_area(
            () if self.area_sampling == "batch" else (batch,),
            self.mask_area, self.alpha, self.beta, seed=seed,
        )
        mask, masked = masks.MASKS[self.mask](maps, area)
        # A flat map (e.g. Grad-CAM whose ReLU removed everything) has no peak:
        # nothing the model attends to, so that image is left unmasked.
        applied = ops.max(maps, axis=(1, 2)) > ops.min(maps, axis=(1, 2))
        sampled = self._sampled(batch, seed)
        if sampled is not None:
            applied = applied & sampled
        mask = mask & applied[:, None, None]
        masked = ops.where(applied, masked, 0.0)
        partner = mixing.random_partner(batch, seed=seed) if self.fill == "mix" else None
        filled = mixing.apply_fill(
            images, mask, self.fill, value_range=self.value_range, partner=partner, seed=seed
        )
        if self.label_mode == "area":
            own = 1.0 - masked
            pasted = masked if partner is not None else None
        else:
            own = 1.0 - mixing.attribution_share(maps, mask)
            pasted = (
                mixing.attribution_share(ops.take(maps, partner, axis=0), mask)
                if partner is not None
                else None
            )
        constant = ops.stop_gradient
        return MaskedBatch(
            images=constant(filled),
            maps=constant(maps),
            mask=mask,
            own=constant(own),
            pasted=None if pasted is None else constant(pasted),
            partner=partner,
            applied=applied,
        )

    def _sampled(self, batch, seed):
        """(B,) bool: samples drawn for masking (probability, warm-up); None: all."""
        applied = None
        if self.probability < 1.0:
            applied = keras.random.uniform((batch,), seed=seed) < self.probability
        if self.warmup_epochs > 0:
            active = ops.broadcast_to(ops.greater_equal(self.epoch, self.warmup_epochs), (batch,))
            applied = active if applied is None else applied & active
        return applied

    def gradmix_loss(self, x, y, y_pred, clean_loss, y_masked, sample_weight, masked: MaskedBatch):
        """Total loss of a step (see the class docstring)."""

        def weighted(w):
            return w if sample_weight is None else w * ops.cast(sample_weight, "float32")

        if self.mode == "paired":
            own = ops.where(masked.applied, masked.own, 0.0)  # unmasked: no second term
            loss = clean_loss + self._compiled_loss(y, y_masked, weighted(own))
        else:  # regularisation losses enter once, here
            own = weighted(masked.own) if self.fill == "mix" else sample_weight
            loss = self._compute_loss(x=x, y=y, y_pred=y_masked, sample_weight=own, training=True)
        if masked.partner is not None:
            y_partner = ops.take(y, masked.partner, axis=0)
            loss = loss + self._compiled_loss(y_partner, y_masked, weighted(masked.pasted))
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
        y = ops.convert_to_tensor(y)
        if self.check_labels(y, y_pred) == "sparse":
            return ops.one_hot(ops.cast(ops.reshape(y, (-1,)), "int32"), y_pred.shape[-1])
        return ops.cast(y, "float32")

    def check_labels(self, y, y_pred) -> str:
        """Checks one output of class scores and labels that fit it (shapes
        only, so symbolic tensors do); returns ``"sparse"`` or ``"onehot"``."""
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
        shape = tuple(y.shape)
        if len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1 and classes != 1):
            return "sparse"
        if len(shape) == 2 and shape[-1] == classes:
            return "onehot"
        raise ValueError(
            f"Labels of shape {shape} fit neither sparse class indices (batch,) or "
            f"(batch, 1) nor one-hot (batch, {classes}) for a model with {classes} "
            f"outputs."
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Keras builds the loss symbolically before the first step on some
        # backends: check the labels there, before the loss's own shape error.
        self.check_labels(y, y_pred)
        return super().compute_loss(x, y, y_pred, sample_weight, training)

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
            "attribution": self.attribution,
            "mode": self.mode,
            "target": self.target,
            "normalize": self.normalize,
            "mask": self.mask,
            "mask_area": list(self.mask_area),
            "alpha": self.alpha,
            "beta": self.beta,
            "area_sampling": self.area_sampling,
            "fill": self.fill,
            "label_mode": self.label_mode,
            "probability": self.probability,
            "warmup_epochs": self.warmup_epochs,
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


def _backend_step():
    """The backend's step module: the only code that differentiates."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from keras_gradmix.steps import tensorflow as step
    elif backend == "jax":
        from keras_gradmix.steps import jax as step
    elif backend == "torch":
        from keras_gradmix.steps import torch as step
    else:
        raise NotImplementedError(
            f"GradMixModel trains with the TensorFlow, JAX or PyTorch backend; "
            f"KERAS_BACKEND is {backend!r}."
        )
    return step
