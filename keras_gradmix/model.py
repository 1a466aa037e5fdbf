"""GradMixModel: wraps any Keras model and trains it with GradMix.

Read top to bottom: wrap (the model, the attributed layers, the options and
the objective), configure (fit, loss, metrics, saving), step (the hooks the
backend steps in :mod:`keras_gradmix.steps` call; only they differentiate).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import warnings
from typing import Any, Sequence

import keras
from keras import ops

from keras_gradmix import compat
from keras_gradmix.attribution import METHODS, attribution_maps
from keras_gradmix.config import GradMixConfig
from keras_gradmix.inputs import default_value_range, first_batch, image_converter
from keras_gradmix.objectives import Classification, Objective
from keras_gradmix.tap import (
    LayerTap,
    candidate_layers,
    graph_output_shape,
    image_layer_paths,
    pick_layer,
    resolve_layer,
    spatial_candidates,
    tapped_outputs,
)
from keras_gradmix.tokens import as_feature_map
from keras_gradmix.transform import MaskedBatch, apply_transformation, sample_transformation

logger = logging.getLogger("keras_gradmix")

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
        self.model = model
        self.layer = _checked_layer(model, layer)
        options = (options or GradMixConfig()).replace(**option_kwargs)
        if options.value_range is None:
            options = options.replace(value_range=default_value_range(model))
        self.options = options
        outputs = getattr(model, "outputs", None)
        if outputs and len(outputs) > 1 and options.output is None and options.target != "loss":
            raise ValueError(
                f"{model.name!r} has {len(outputs)} outputs; choose the one whose score "
                f"GradMix attributes with output= (an index or a name). The loss still "
                f"uses every output."
            )
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

    @property
    def output_names(self):
        """The wrapped model's (so ``compile`` maps losses given by output name)."""
        return getattr(self.model, "output_names", None)

    def call(self, inputs, training=None):
        inputs = self.objective.model_inputs(inputs)
        converter = image_converter(self.model)
        if converter is not None:  # a KerasHub task's preprocessing, as its fit applies it
            inputs = converter(inputs)
        return self.model(inputs, training=training)

    # ------------------------------------------------------------- configure
    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, plus a look at the first batch (see
        :meth:`inspect_batch`) and a callback that tells the step the epoch."""
        arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        arguments.update(arguments.pop("kwargs", {}))
        x, y, sample_weight, arguments["x"] = first_batch(
            arguments.get("x"), arguments.get("y"), arguments.get("sample_weight"),
            arguments.get("batch_size"))
        if x is not None:
            self.inspect_batch(x, y)
        arguments["callbacks"] = [*(arguments.get("callbacks") or []), _EpochCounter(self.epoch)]
        return super().fit(**arguments)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        self.inspect_batch(x, y)
        return super().train_on_batch(x, y, *args, **kwargs)

    def inspect_batch(self, x, y):
        """A look at one batch, eagerly, before training on it: resolves
        ``layer=None`` to the last candidate layer whose maps are not all flat,
        and warns once when the attributed layers' maps are all flat (nothing
        would be masked), naming the layer to use instead."""
        if getattr(self, "_inspected", False) and self.layer is not None:
            return
        x = self.objective.prepare_inputs(ops.convert_to_tensor(x))
        if self.layer is None:
            choice, candidates = self._last_non_flat(x, y)
            if choice is None and candidates:
                warnings.warn(
                    f"GradMix: every candidate layer of {self.model.name!r} gives flat "
                    f"attribution maps on the first batch; layer=None falls back to the "
                    f"last one, {candidates[-1]!r}, where nothing will be masked until "
                    f"its gradients differ.", stacklevel=3)
                choice = candidates[-1]
            self.layer = choice
        elif _all_flat(self._maps(x, y, self.layer_paths)):
            better, _ = self._last_non_flat(x, y)
            hint = (f"attribute layer={better!r} (the last layer whose maps are not flat)"
                    if better else "no layer of the model gives non-flat maps on it")
            warnings.warn(
                f"GradMix: every attribution map of layer={self.layer!r} is flat on the "
                f"first batch, so nothing will be masked. The score's gradient does not "
                f"reach those outputs (e.g. a transformer pooled by its class token "
                f"leaves the last block's patch tokens without gradient); {hint}.",
                stacklevel=3,
            )
        self._inspected = True

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
        is unresolved, on every candidate layer)."""
        paths = self.layer_paths
        if paths is None:
            return LayerTap(candidate_layers(self.model), on_output)
        return LayerTap({p: resolve_layer(self.model, p) for p in paths}, on_output)

    def tapped_activations(self, tap: LayerTap, image_size) -> list:
        """The attributed layers' outputs from one clean forward, checked
        (without :meth:`inspect_batch`, the first one resolves ``layer=None``
        to the last spatial map)."""
        if self.layer is None:
            self.layer = pick_layer(tap, image_size, self.model.name, self.options)
        return tapped_outputs(tap, self.layer_paths, self.model.name, image_size, self.options)

    def _maps(self, x, y, paths) -> list:
        """Each layer's own attribution maps of the batch ``x``, inference mode."""
        layer = self.layer
        self.layer = list(paths)
        try:
            activations, gradients = _backend_step().attribute(self, x, y)
        finally:
            self.layer = layer
        size = x.shape[1:3]
        return [METHODS[self.options.attribution](*self._feature_maps([a, g], size))
                for a, g in zip(activations, gradients)]

    def _last_non_flat(self, x, y) -> tuple[str | None, list[str]]:
        """The last candidate layer (call order) whose maps of ``x`` are not
        all flat (None if none is), and the candidates."""
        self.check_step_ready(x, training=False)
        with LayerTap(candidate_layers(self.model)) as tap:
            self(x, training=False)
        candidates = spatial_candidates(tap, x.shape[1:3], self.options)
        if not candidates:
            return None, candidates
        maps = self._maps(x, y, candidates)
        found = [path for path, m in zip(candidates, maps) if not _all_flat([m])]
        if found:
            logger.info("GradMix attributes the output of layer %r (layer=None).", found[-1])
        return (found[-1] if found else None), candidates

    def _feature_maps(self, tensors, image_size) -> list:
        """4-D maps as they are, transformer tokens on their patch grid."""
        o = self.options
        return [as_feature_map(t, image_size, o.prefix_tokens, o.token_grid) for t in tensors]

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
        if not isinstance(activations, (list, tuple)):
            activations, gradients = [activations], [gradients]
        maps = attribution_maps(
            self._feature_maps(activations, size), self._feature_maps(gradients, size), size,
            self.options.attribution, self.options.normalize,
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
    the graph tells, with a 4-D map or a 3-D token output."""
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ValueError("layer must name at least one layer, got [].")
        layer = list(layer)
    for path in [] if layer is None else layer if isinstance(layer, list) else [layer]:
        shape = graph_output_shape(resolve_layer(model, path))
        if shape is not None and len(shape) not in (3, 4):
            raise ValueError(
                f"Layer {path!r} has output shape {shape}; GradMix needs a 4-D "
                f"(batch, height, width, channels) feature map or (batch, tokens, "
                f"channels) transformer tokens. Candidates: {image_layer_paths(model)}."
            )
    return layer


def _all_flat(maps) -> bool:
    """Whether every map of every image is constant (no peak anywhere)."""
    for m in maps:
        m = ops.convert_to_numpy(m).reshape(len(m), -1)
        if (m.max(axis=1) > m.min(axis=1)).any():
            return False
    return True


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
