"""GradMixModel: wraps any Keras model and trains it with GradMix.

Read top to bottom: wrap (the model, the attributed layers, the options and
the objective), configure (fit, loss, metrics, saving), step (the hooks the
backend steps in :mod:`keras_gradmix.steps` call; only they differentiate).
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any, Sequence

import keras
from keras import ops

from keras_gradmix import compat
from keras_gradmix.attribution import attribution_maps
from keras_gradmix.config import GradMixConfig
from keras_gradmix.objectives import Classification, Objective
from keras_gradmix.tap import (
    LayerTap,
    graph_output_shape,
    image_layer_paths,
    iter_layers,
    pick_layer,
    resolve_layer,
    tapped_outputs,
)
from keras_gradmix.transform import MaskedBatch, apply_transformation, sample_transformation

_KERAS_ARGUMENTS = ("name", "dtype", "trainable")


class _EpochCounter(keras.callbacks.Callback):
    # Feeds the epoch to the compiled step (for warmup_epochs) without retracing.
    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


def _split_options(kwargs: dict) -> tuple[dict, dict]:
    """GradMix options and ``keras.Model`` arguments; anything else is an error."""
    fields = GradMixConfig.fields()
    unknown = [k for k in kwargs if k not in fields and k not in _KERAS_ARGUMENTS]
    if unknown:
        hints = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        hint = "".join(f" Did you mean {v[0]!r} for {k!r}?" for k, v in hints.items() if v)
        raise ValueError(f"Unknown GradMix option(s) {unknown}.{hint} Options: {list(fields)}.")
    options = {k: v for k, v in kwargs.items() if k in fields}
    return options, {k: v for k, v in kwargs.items() if k not in fields}


@keras.saving.register_keras_serializable(package="keras_gradmix")
class GradMixModel(keras.Model):
    """Trains ``model`` with GradMix: masks what the model already attends to.

    At every training step the clean batch is forwarded, the gradient of a
    score (by default the ground-truth class output) with respect to the output
    of ``layer`` gives an attribution map per image (Grad-CAM by default), and
    a box centred on each map's peak (or the top-attribution pixels) is filled
    with noise (or a constant, or a partner image). The model is then trained
    on the masked batch, besides (``mode="paired"``) or instead of
    (``mode="replace"``) the clean one. The attribution reuses the clean
    forward pass and never reaches the optimizer; metrics are computed on the
    clean predictions. Inference (``predict``, ``evaluate``, ``__call__``) is
    exactly the wrapped model's.

    Args:
        model: a built or unbuilt Keras classifier with one image input
            ``(B, H, W, C)`` (channels last) and one output ``(B, K)``:
            functional, Sequential or subclassed.
        layer: name of the layer whose output is attributed, or a
            "/"-separated path into nested models ("backbone/conv5_block3_out"),
            or a list of them: each layer's map is normalised, upsampled and the
            maps summed (the reference code's multi-layer map). None picks the
            last genuine spatial feature map (a 4-D output of a layer of the
            model or of a nested model) at the first step and reports it as an
            INFO record of the ``"keras_gradmix"`` logger.
        objective: what the step minimises and attributes;
            :class:`~keras_gradmix.objectives.Classification` (the compiled
            loss) by default, :class:`~keras_gradmix.contrastive.Contrastive`
            for the paper's contrastive recipe.
        options: a :class:`~keras_gradmix.GradMixConfig`; keyword arguments
            named like its fields (``attribution="layercam"``, ``mode=``,
            ``mask_area=``, ``fill=``, ``probability=``, ``warmup_epochs=``,
            ``value_range=``, ``bn_statistics=``, ``seed=``...) override it.
            Every option is documented there. ``name``, ``dtype`` and
            ``trainable`` go to ``keras.Model``.

    Attribution maths runs in float32 under any dtype policy, and the score is
    multiplied by the loss scale under ``mixed_float16`` so its gradient does
    not underflow (maps are invariant to a positive scale).

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

    # ------------------------------------------------------------------ wrap
    def __init__(
        self,
        model: keras.Model,
        layer: str | Sequence[str] | None = None,
        *,
        objective: Objective | None = None,
        options: GradMixConfig | None = None,
        **kwargs: Any,
    ):
        option_kwargs, keras_kwargs = _split_options(kwargs)
        super().__init__(**keras_kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(f"GradMixModel wraps a keras.Model, got {type(model).__name__}.")
        outputs = getattr(model, "outputs", None)
        if outputs is not None and len(outputs) != 1:
            raise ValueError(
                f"GradMixModel needs a model with one output (class scores), "
                f"{model.name!r} has {len(outputs)}."
            )
        self.model = model
        self.layer = _checked_layer(model, layer)
        self.options = (options or GradMixConfig()).replace(**option_kwargs)
        self.objective = objective or Classification()
        self.objective.check_options(self.options)
        self.seed_generator = keras.random.SeedGenerator(self.options.seed)
        self.epoch = keras.Variable(0, dtype="int32", trainable=False, name="gradmix_epoch")

    @property
    def layer_paths(self) -> list[str] | None:
        """The attributed layer paths, or None while ``layer=None`` is unresolved."""
        if self.layer is None:
            return None
        return list(self.layer) if isinstance(self.layer, list) else [self.layer]

    def call(self, inputs, training=None):
        outputs = self.model(self.objective.model_inputs(inputs), training=training)
        if isinstance(outputs, (list, tuple, dict)):
            raise ValueError(
                f"GradMixModel needs a model with one output (class scores); "
                f"{self.model.name!r} returned {type(outputs).__name__} of "
                f"{len(outputs)} outputs."
            )
        return outputs

    # ------------------------------------------------------------- configure
    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, plus a callback that tells the step the epoch."""
        args = list(args)
        if len(args) > 5:  # callbacks passed positionally
            args[5] = [*(args[5] or []), _EpochCounter(self.epoch)]
        else:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _EpochCounter(self.epoch)]
        return super().fit(*args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The objective's loss of a clean batch (``evaluate`` uses it)."""
        return self.objective.clean_loss(self, x, y, y_pred, sample_weight, training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.objective.metrics(self, x, y, y_pred, sample_weight)

    def get_config(self):
        config = super().get_config()  # name, trainable, dtype
        config.update(
            model=keras.saving.serialize_keras_object(self.model),
            layer=self.layer,
            **self.options.get_config(),
        )
        if type(self.objective) is not Classification:
            config["objective"] = keras.saving.serialize_keras_object(self.objective)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        if "objective" in config:
            config["objective"] = keras.saving.deserialize_keras_object(
                config["objective"], custom_objects=custom_objects
            )
        return cls(model, **config)

    # ------------------------------------------------------------------ step
    def train_step(self, *args, **kwargs):
        return _backend_step().train_step(self, *args, **kwargs)

    def preview(self, images, labels, seed: int = 0) -> MaskedBatch:
        """What training would do to ``images`` now: maps, masks, trained images.

        Runs eagerly in inference mode (BatchNorm uses its running statistics)
        with its own seed, so it changes neither the model, nor ``layer``, nor
        the training RNG.
        """
        images = self.objective.prepare_inputs(images)
        layer = self.layer
        try:
            activations, gradients = _backend_step().attribute(self, images, labels)
        finally:
            self.layer = layer  # layer=None stays unresolved until training
        return self.masked_batch(images, activations, gradients, seed=keras.random.SeedGenerator(seed))

    # The backend steps call the hooks below, in this order.
    def check_step_ready(self, x, training: bool = True):
        """Checks what the step needs, and builds an unbuilt model outside any
        tap (Keras builds by tracing ``call``, which would count as calls)."""
        if training:
            self.objective.check_compiled(self)
        self.check_images(x)
        if not self.model.built:
            self.model(keras.KerasTensor((None, *x.shape[1:]), dtype=x.dtype))

    def tap(self, on_output=None) -> LayerTap:
        """A :class:`LayerTap` on the attributed layers (while ``layer=None``
        is unresolved, on every layer of the model and its nested models)."""
        paths = self.layer_paths
        if paths is None:
            return LayerTap(dict(iter_layers(self.model, models_only=True)), on_output)
        return LayerTap({p: resolve_layer(self.model, p) for p in paths}, on_output)

    def tapped_activations(self, tap: LayerTap, image_size) -> list:
        """The attributed layers' outputs from one clean forward, checked
        (the first one resolves ``layer=None``)."""
        if self.layer is None:
            self.layer = pick_layer(tap, image_size, self.model.name)
        return tapped_outputs(tap, self.layer_paths, self.model.name)

    def check_reaches_output(self, reaches: Sequence[bool]):
        """Raises for an attributed layer whose output does not reach the model's."""
        for path, reached in zip(self.layer_paths or [], reaches):
            if not reached:
                raise ValueError(
                    f"The output of {self.model.name!r} does not depend on layer "
                    f"{path!r}; attribute a layer on the path to the output."
                )

    @property
    def needs_clean_loss(self) -> bool:
        """Whether the step computes the clean batch's loss."""
        return self.options.mode == "paired" or self.options.target == "loss"

    def clean_loss(self, x, y, y_pred, sample_weight, training=True):
        return self.objective.clean_loss(self, x, y, y_pred, sample_weight, training)

    def attribution_score(self, y, y_pred, clean_loss):
        """Scalar whose gradient w.r.t. the attributed layers gives the maps."""
        score = self.objective.attribution_score(self, y, y_pred, clean_loss)
        # Maps are invariant to a positive scale; scaling by the loss scale keeps
        # float16 gradients from underflowing under mixed precision.
        optimizer = getattr(self, "optimizer", None)  # absent before compile()
        return score if optimizer is None else optimizer.scale_loss(score)

    def masked_batch(self, images, activations, gradients, seed=None) -> MaskedBatch:
        """Samples this batch's transformation and applies it at the maps' peaks.

        ``activations``/``gradients``: one tensor or a list per layer. ``seed``
        defaults to the model's own generator; an int gives independent draws.
        """
        images = ops.convert_to_tensor(images)
        size = images.shape[1:3]
        maps = attribution_maps(
            activations, gradients, size, self.options.attribution, self.options.normalize
        )
        batch = ops.shape(images)[0]
        seed = self.seed_generator if seed is None else seed
        transformation = sample_transformation(self.options, batch, size, seed, self.epoch)
        maskable = self.objective.maskable(batch)
        if maskable is not None:
            transformation = transformation._replace(sampled=transformation.sampled & maskable)
        return apply_transformation(images, maps, transformation, self.options)

    @contextlib.contextmanager
    def masked_pass_statistics(self):
        """Context for the masked forward: with ``bn_statistics="clean"`` the
        BatchNorm moving statistics it writes are put back afterwards."""
        if self.options.bn_statistics == "all":
            yield
            return
        variables = [
            v
            for layer in compat.all_layers(self.model)
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        saved = [ops.copy(v) for v in variables]  # a snapshot, not the variable
        yield
        for variable, value in zip(variables, saved):
            variable.assign(value)

    def gradmix_loss(self, x, y, y_pred, clean_loss, y_masked, sample_weight, masked: MaskedBatch):
        """Total loss of a step (see the objective)."""
        return self.objective.loss(self, x, y, y_pred, clean_loss, y_masked, sample_weight, masked)

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


def _checked_layer(model, layer):
    """``layer`` as a path or a list of paths, each found in ``model`` and, where
    the graph tells, with a 4-D output."""
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ValueError("layer must name at least one layer, got [].")
        layer = list(layer)
    for path in [] if layer is None else layer if isinstance(layer, list) else [layer]:
        shape = graph_output_shape(resolve_layer(model, path))
        if shape is not None and len(shape) != 4:
            raise ValueError(
                f"Layer {path!r} has output shape {shape}; GradMix needs a 4-D "
                f"(batch, height, width, channels) feature map. Candidates: "
                f"{image_layer_paths(model)}."
            )
    return layer


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
