"""GradMixModel: wraps any Keras model and trains it with GradMix.

Read top to bottom: wrap (the model, the attributed layers, the options and
the objective), configure (fit, loss, metrics, saving), step (the hooks the
backend steps in :mod:`keras_gradmix.steps` call; only they differentiate).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Sequence

import keras
from keras import ops

from keras_gradmix import compat, guard, inspection
from keras_gradmix.attributor import Attributor
from keras_gradmix.config import DOCS, GradMixConfig, split_options
from keras_gradmix.epochs import EpochCounter, raise_if_bad
from keras_gradmix.inputs import default_value_range, image_converter, input_grid
from keras_gradmix.token_ids import check_token_options, is_token_input, token_ids, valid_positions, with_token_ids
from keras_gradmix.objectives import Classification, Objective
from keras_gradmix.steps import backend_step
from keras_gradmix.tap import LayerTap
from keras_gradmix.transform import (
    MASKING_METRICS,
    MaskedBatch,
    apply_transformation,
    sample_transformation,
)

_KERAS_ARGUMENTS = ("name", "dtype", "trainable")


@keras.saving.register_keras_serializable(package="keras_gradmix")
class GradMixModel(keras.Model):
    """Trains ``model`` with GradMix: masks what the model already attends to.

    At every training step the clean batch is forwarded, the gradient of a
    score (by default the ground-truth class output) with respect to the output
    of ``layer`` gives an attribution map per image (LayerCAM by default), and
    a box centred on each map's peak (or the top-attribution pixels) is filled
    with noise (or a constant, or a partner image). The model is then trained
    on the masked batch, besides (``mode="paired"``) or instead of
    (``mode="replace"``) the clean one. The attribution reuses the clean
    forward pass and never reaches the optimizer; metrics are computed on the
    clean predictions. Inference (``predict``, ``evaluate``, ``__call__``) is
    exactly the wrapped model's.

    Args:
        model: a built or unbuilt Keras classifier with one image input
            ``(B, H, W, C)`` (channels last; or sequences ``(B, T, C)``,
            volumes ``(B, D, H, W, C)``, token ids ``(B, T)`` or a KerasHub
            text dict) and one output ``(B, K)``: functional, Sequential or subclassed.
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

    Examples:

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
        option_kwargs, keras_kwargs = split_options(kwargs, _KERAS_ARGUMENTS)
        super().__init__(**keras_kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(f"GradMixModel wraps a keras.Model, got {type(model).__name__}.")
        self.model = model
        options = (options or GradMixConfig()).replace(**option_kwargs)
        if options.value_range is None:
            options = options.replace(value_range=default_value_range(model))
        # The attribution (model, layers, method, target...): its own part.
        self.attributor = Attributor.from_options(model, layer, options)
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
        # The guard's record of the first bad batch (problem code, epoch, batch)
        # and the step count of the epoch (keras_gradmix.guard); not saved.
        self._guard_record = keras.Variable([0, 0, 0], dtype="int32", trainable=False,
                                            name="gradmix_guard", aggregation="only_first_replica")
        self._guard_batch = keras.Variable(0, dtype="int32", trainable=False, name="gradmix_batch",
                                           aggregation="only_first_replica")
        self.masking_trackers = [keras.metrics.Mean(name=name) for name in MASKING_METRICS]
        if model.built:  # what callbacks such as BackupAndRestore check
            self.built = True

    @property
    def options(self) -> GradMixConfig:
        return self._options

    @options.setter
    def options(self, value: GradMixConfig):
        self._options = value  # the attributor follows, keeping a resolved layer
        self.attributor = Attributor.from_options(self.model, self.attributor.layer, value)

    @property
    def layer(self):
        """The attributed layer path(s); None until ``layer=None`` is resolved."""
        return self.attributor.layer

    @layer.setter
    def layer(self, value):
        self.attributor.layer = value

    @property
    def layer_paths(self) -> list[str] | None:
        """The attributed layer paths, or None while ``layer=None`` is unresolved."""
        return self.attributor.layer_paths

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
    @property
    def jit_compile(self):
        return keras.Model.jit_compile.fget(self)

    @jit_compile.setter
    def jit_compile(self, value):  # what compile(jit_compile=...) sets
        if value is True and keras.backend.backend() == "torch":
            raise ValueError(
                "GradMix does not run under jit_compile=True on the PyTorch backend: "
                "torch.compile cannot trace the attribution gradients (and on the CPU it "
                "made even plain Keras training slower: "
                f"{DOCS}results/torch_compile/). Use "
                "jit_compile=False (the default on PyTorch), or XLA with TensorFlow or JAX.")
        keras.Model.jit_compile.fset(self, value)

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, plus one look at the first batch
        (:mod:`keras_gradmix.inspection`) and a callback that tells the step
        the epoch."""
        arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        x, y, sample_weight, arguments["x"] = inspection.first_batch(
            arguments.get("x"), arguments.get("y"), arguments.get("sample_weight"),
            arguments.get("batch_size"))
        if x is not None:
            self.inspect_batch(x, y, sample_weight)
        # First, so that no other callback sees the step's non-finite diagnostic.
        arguments["callbacks"] = [EpochCounter(self), *(arguments.get("callbacks") or [])]
        try:
            return super().fit(**arguments)
        except BaseException:
            compat.forget_step_functions(self)  # so that the next fit traces afresh
            raise

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """``keras.Model.train_on_batch``; the first call after each
        ``compile()`` looks at its batch as ``fit`` does (not every call: the
        look costs an eager attribution pass); later calls check host (NumPy)
        labels only: shape and range, no device read."""
        compiled = id(getattr(self, "optimizer", None)), id(getattr(self, "_compile_loss", None))
        if getattr(self, "_inspected_for", None) != compiled:
            self.inspect_batch(x, y, sample_weight)
            self._inspected_for = compiled
        elif self.options.check_inputs and inspection.host_labels(self, y):
            inspection.check_labels(self, x, y, batch="this train_on_batch batch")
        self._guard_batch.assign(0)
        try:
            logs = super().train_on_batch(x, y, sample_weight, class_weight, return_dict=True)
        except BaseException:
            compat.forget_step_functions(self)
            raise
        logs.pop(guard.HELD, None)
        raise_if_bad(self, "train_on_batch")  # train_on_batch returns host values: a sync anyway
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def inspect_batch(self, x, y=None, sample_weight=None):
        """Checks a batch and resolves ``layer=None`` before training on it
        (see :mod:`keras_gradmix.inspection`), then builds the compiled state
        from its shapes (on TensorFlow the step is then traced once, not
        twice: :func:`keras_gradmix.compat.build_before_tracing`); ``fit`` calls it."""
        inspection.inspect_batch(self, x, y, sample_weight)
        self.built = True  # the wrapped model is built now (BackupAndRestore checks)
        compat.build_before_tracing(self, (x, y, sample_weight))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The objective's loss of a clean batch (``evaluate`` uses it)."""
        return self.objective.clean_loss(self, x, y, y_pred, sample_weight, training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.objective.metrics(self, x, y, y_pred, sample_weight)

    def get_metrics_result(self):
        # The masking trackers are reset with the others but reported by the
        # train step only: evaluate() has no masking to report.
        return {k: v for k, v in super().get_metrics_result().items() if k not in MASKING_METRICS}

    def track_masking(self, masked: MaskedBatch, batch_size) -> dict:
        """Updates the masking trackers with one step; their results, for the logs."""
        size = ops.cast(batch_size, "float32")
        applied = ops.cast(masked.applied, "float32")
        count = ops.sum(applied)
        values = (count / size, ops.sum(ops.cast(masked.flat, "float32")) / size,
                  ops.sum(applied * ops.cast(masked.area, "float32")) / ops.maximum(count, 1.0))
        weights = (size, size, count)
        for tracker, value, weight in zip(self.masking_trackers, values, weights):
            tracker.update_state(value, sample_weight=weight)
        return {tracker.name: tracker.result() for tracker in self.masking_trackers}

    def export(self, filepath, format: str = "tf_saved_model", **kwargs):
        """Exports the wrapped model for serving (``keras.Model.export``).

        Inference is exactly the wrapped model's, so the artifact is the plain
        classifier: no GradMix code is needed to serve it.
        """
        return self.model.export(filepath, format=format, **kwargs)

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

    def save_own_variables(self, store):
        """The wrapper's own state: the epoch counter and the seed generator's
        state, which Keras does not save by itself; so a run restored from a
        checkpoint (``BackupAndRestore``, ``load_weights``) draws the masks an
        uninterrupted run draws."""
        for i, variable in enumerate([self.epoch, self.seed_generator.state]):
            store[str(i)] = variable

    def load_own_variables(self, store):
        variables = [self.epoch, self.seed_generator.state]
        for i, variable in enumerate(variables[: len(store.keys())]):
            variable.assign(store[str(i)])

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
        return backend_step().train_step(self, *args, **kwargs)

    def preview(self, images, labels, seed: int = 0) -> MaskedBatch:
        """What training would do to ``images`` now: maps, masks, trained images.

        Runs eagerly in inference mode (BatchNorm uses its running statistics)
        with its own seed, so it changes neither the model, nor ``layer``, nor
        the training RNG.
        """
        images = self.objective.prepare_inputs(images)
        # layer=None stays unresolved until training: this look resolves it for itself.
        paths = self.layer_paths or [inspection.shape_choice(self, images)]
        activations, gradients = self.attribute(images, labels, paths)
        return self.masked_batch(images, activations, gradients, seed=keras.random.SeedGenerator(seed))

    def attribute(self, x, y, paths=None) -> tuple[list, list]:
        """The attributor's inference-mode activations and gradients, of this
        trainer's score (its objective's, with its loss and loss scale)."""
        def score(x, y, y_pred):
            loss = (self.clean_loss(x, y, y_pred, None, training=False)
                    if self.objective.score_needs_loss(self.options) else None)
            return self.attribution_score(y, y_pred, loss)

        self.check_step_ready(x, training=False)
        return self.attributor.attribute(x, y, paths, score)

    # The backend steps call the hooks below, in this order.
    def check_step_ready(self, x, training: bool = True):
        """Checks what the step needs, and builds an unbuilt model outside any
        tap (Keras builds by tracing ``call``, which would count as calls)."""
        if training:
            self.objective.check_compiled(self)
        if is_token_input(x):
            check_token_options(self.options)
        self.attributor.ready(x)  # and builds the model

    # The attribution is the attributor's (keras_gradmix.attributor).
    def tap(self, on_output=None, paths=None) -> LayerTap:
        return self.attributor.tap(on_output, paths)

    def tapped_activations(self, tap: LayerTap, image_size, paths=None) -> list:
        return self.attributor.tapped_activations(tap, image_size, paths)

    def feature_maps(self, tensors, image_size) -> list:
        return self.attributor.feature_maps(tensors, image_size)

    def check_reaches_output(self, reaches: Sequence[bool], paths=None):
        self.attributor.check_reaches_output(reaches, paths)

    @property
    def needs_clean_loss(self) -> bool:
        """Whether the step computes the clean batch's loss."""
        return self.options.mode == "paired" or self.objective.score_needs_loss(self.options)

    @property
    def guard_variables(self):
        """``(record, batch)``: the first bad batch ``[code, epoch, batch]`` of
        this epoch (code 0: none) and the epoch's step count (:mod:`keras_gradmix.guard`)."""
        return self._guard_record, self._guard_batch

    def safe_labels(self, y, y_pred):
        """Labels outside the model's classes replaced, so that no loss kernel fails."""
        return self.objective.label_problem(self, y, y_pred)[0]

    def step_problems(self, terms: dict, x, y, y_pred):
        """The batch's problem code: non-finite terms, labels outside the
        classes, and non-finite floating inputs (unless ``check_inputs=False``:
        a model may read NaN as "missing" on purpose)."""
        return guard.batch_problems(terms, self.objective.label_problem(self, y, y_pred)[1],
                                    x if self.options.check_inputs else None)

    def clean_loss(self, x, y, y_pred, sample_weight, training=True):
        y = self.safe_labels(y, y_pred)
        return self.objective.clean_loss(self, x, y, y_pred, sample_weight, training)

    def attribution_score(self, y, y_pred, clean_loss):
        """Scalar whose gradient w.r.t. the attributed layers gives the maps."""
        score = self.objective.attribution_score(self, self.safe_labels(y, y_pred), y_pred, clean_loss)
        # Maps are invariant to a positive scale; scaling by the loss scale keeps
        # float16 gradients from underflowing under mixed precision.
        optimizer = getattr(self, "optimizer", None)  # absent before compile()
        return score if optimizer is None else optimizer.scale_loss(score)

    def image_maps(self, activations, gradients, image_size):
        """The batch's attribution maps at ``image_size``, each in [0, 1]:
        ``(B, H, W)``. ``activations``/``gradients``: one tensor or a list per layer."""
        return self.attributor.maps(activations, gradients, image_size)

    def masked_batch(self, images, activations, gradients, seed=None) -> MaskedBatch:
        """Samples this batch's transformation and applies it at the maps' peaks.

        ``activations``/``gradients``: one tensor or a list per layer. ``seed``
        defaults to the model's own generator; an int gives independent draws.
        Token inputs keep their structure: ``images`` of the result are ids
        (a dict with its other entries following them).
        """
        inputs, valid = images, None
        if is_token_input(inputs):  # ids replaced by ids; padding never chosen
            images, valid = token_ids(inputs), valid_positions(inputs, self.options.unselectable_token_ids)
        images = ops.convert_to_tensor(images)
        size = input_grid(images)
        maps = self.image_maps(activations, gradients, size)
        batch = ops.shape(images)[0]
        seed = self.seed_generator if seed is None else seed
        transformation = sample_transformation(self.options, batch, size, seed, self.epoch)
        maskable = self.objective.maskable(batch)
        if maskable is not None:
            transformation = transformation._replace(sampled=transformation.sampled & maskable)
        masked = apply_transformation(images, maps, transformation, self.options, valid)
        copies = 1 if masked.auxiliary is None else 2
        return masked._replace(images=with_token_ids(inputs, masked.images, masked.index, copies))

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

    def gradmix_terms(self, x, y, y_pred, clean_loss, y_masked, sample_weight, masked: MaskedBatch) -> dict:
        """The named terms of a step's loss (see the objective); the loss is their sum."""
        y = self.safe_labels(y, y_pred)
        return self.objective.loss_terms(self, x, y, y_pred, clean_loss, y_masked, sample_weight, masked)

    def gradmix_loss(self, *args) -> object:
        """Total loss of a step: the sum of :meth:`gradmix_terms`."""
        return sum(self.gradmix_terms(*args).values())

