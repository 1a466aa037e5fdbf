"""What a GradMix step minimises and what it attributes: the objective.

One trainer (:class:`~keras_gradmix.GradMixModel`) runs the step on every
backend; the objective it holds supplies the losses and the attributed score:

* :class:`Classification` (the default): the loss given to ``compile()``; the
  attributed score is the class output or the clean loss (``target``).
* :class:`Contrastive`: the paper's recipe, SupCon + SimCLR on two views with
  GradMix positives (:mod:`keras_gradmix.contrastive`).

An objective receives the trainer, reads its options (``trainer.options``)
and never differentiates: the backend step does that.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_gradmix import compat

# The terms a step's loss may have, in the order of their bits in the step's
# problem code (see keras_gradmix.guard).
TERMS = ("clean", "masked", "partner", "masked_supcon", "outlier", "auxiliary")


class Objective:
    """Base class: the hooks a GradMix step calls, with classifier defaults."""

    def check_options(self, options) -> None:
        """Raises for options this objective cannot honour."""

    def prepare_inputs(self, x):
        """The image batch the step forwards (identity here)."""
        return x

    def model_inputs(self, x):
        """What ``trainer(x)`` passes to the wrapped model (identity here)."""
        return x

    def check_compiled(self, trainer) -> None:
        """Raises before the first update when ``compile()`` lacks something."""

    def clean_loss(self, trainer, x, y, y_pred, sample_weight=None, training=True):
        """Loss of the clean batch, regularisation losses included."""
        raise NotImplementedError

    def attribution_score(self, trainer, y, y_pred, clean_loss):
        """Scalar whose gradient w.r.t. the attributed layers gives the maps."""
        raise NotImplementedError

    def score_needs_loss(self, options) -> bool:
        """Whether :meth:`attribution_score` reads the clean loss (then the
        steps compute it, also for an attribution in inference mode)."""
        return isinstance(options.target, str) and options.target == "loss"

    def label_problem(self, trainer, y, y_pred):
        """``(labels, bad)``: labels safe to compute the loss with, and a bool
        scalar, whether some label is outside the model's classes (the step
        then applies no update, :mod:`keras_gradmix.guard`). Here: as given."""
        return y, ops.convert_to_tensor(False)

    def maskable(self, batch_size):
        """``(B,)`` bool: images that may be masked; None for all."""
        return None

    def loss_terms(self, trainer, x, y, y_pred, clean_loss, y_masked, sample_weight, masked) -> dict:
        """The named terms of a step's loss (``TERMS``), from the clean and the
        masked forward; the loss is their sum."""
        raise NotImplementedError

    def loss(self, *args) -> object:
        """Total loss of a step: the sum of :meth:`loss_terms`."""
        return sum(self.loss_terms(*args).values())

    def metrics(self, trainer, x, y, y_pred, sample_weight=None) -> dict:
        """The step's logs (clean predictions)."""
        return keras.Model.compute_metrics(trainer, x, y, y_pred, sample_weight)

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_gradmix")
class Classification(Objective):
    """A classifier trained with the compiled loss (any Keras loss).

    The masked batch enters the compiled loss through sample weights: with
    ``fill="noise"`` or a constant, ``w * L(masked, y)`` (paired) or
    ``L(masked, y)`` (replace); with ``fill="mix"``,
    ``w * L(masked, y) + w_p * L(masked, y_partner)``, where ``w`` and ``w_p``
    are the kept and pasted shares (``label_mode``). With
    ``masked_as="outlier"`` the masked images carry no label: they enter
    :func:`outlier_loss` (toward the uniform distribution) instead.
    Regularisation losses enter once: from the clean pass (paired) or the
    masked pass (replace).
    """

    def check_compiled(self, trainer):
        if not compat.has_compiled_loss(trainer):
            raise ValueError(
                "GradMixModel trains with the loss given to compile(); compile it "
                "with one, e.g. loss='sparse_categorical_crossentropy'."
            )
        if trainer.options.masked_as == "outlier" and compat.loss_from_logits(
                trainer, trainer.options.output) is None:
            raise ValueError(
                "masked_as='outlier' trains the masked images toward the uniform "
                "distribution and must know whether the model outputs logits or "
                "probabilities; the compiled loss does not say. Compile with a Keras "
                "cross-entropy, e.g. loss=keras.losses.SparseCategoricalCrossentropy("
                "from_logits=True).")

    def clean_loss(self, trainer, x, y, y_pred, sample_weight=None, training=True):
        # Keras builds the loss symbolically before the first step on some
        # backends: check the labels here, before the loss's own shape error.
        if trainer.options.target in ("label", "prediction"):
            check_labels(trainer, *attributed_output(trainer.model, trainer.options.output, y, y_pred))
        return keras.Model.compute_loss(trainer, x, y, y_pred, sample_weight, training)

    def label_problem(self, trainer, y, y_pred):
        """Sparse class indices outside ``[0, K)`` are replaced by 0 (so that no
        loss kernel fails on them: TensorFlow's raises, PyTorch's indexes out of
        range, JAX's reads garbage) and flagged."""
        if isinstance(y_pred, (list, tuple, dict, type(None))) or isinstance(y, (list, tuple, dict, type(None))):
            return y, ops.convert_to_tensor(False)
        classes = y_pred.shape[-1]
        if classes == 1 or not (len(y.shape) == 1 or (len(y.shape) == 2 and y.shape[-1] == 1)):
            return y, ops.convert_to_tensor(False)
        y = ops.convert_to_tensor(y)  # e.g. a tf.data batch's labels on JAX
        outside = (y < 0) | (y >= classes)
        return ops.where(outside, ops.zeros_like(y), y), ops.any(outside)

    def attribution_score(self, trainer, y, y_pred, clean_loss):
        target = trainer.options.target
        if isinstance(target, str) and target == "loss":
            return clean_loss
        return trainer.attributor.score(y, y_pred)

    def loss_terms(self, trainer, x, y, y_pred, clean_loss, y_masked, sample_weight, masked):
        def take(values, index):
            return keras.tree.map_structure(lambda t: ops.take(t, index, axis=0), values)

        index, scale = masked.index, 1.0
        y_own, sw_own = y, sample_weight
        if index is not None:  # masked_fraction: a k-image share, its term weighted by f
            y_own = take(y, index)
            sw_own = None if sample_weight is None else take(sample_weight, index)
            scale = trainer.options.masked_fraction

        def weighted(w):
            w = w if sw_own is None else w * ops.cast(sw_own, "float32")
            return w * scale if scale != 1.0 else w

        terms = {}
        if trainer.options.masked_as == "outlier":  # paired only (GradMixConfig checks)
            _, logits = attributed_output(trainer.model, trainer.options.output, y, y_masked)
            applied = ops.cast(masked.applied, "float32")
            from_logits = compat.loss_from_logits(trainer, trainer.options.output)
            auxiliary = None
            if masked.auxiliary is not None:  # the outliers, then their auxiliary positives
                logits = ops.split(logits, 2)[0]
                y_masked, auxiliary = (keras.tree.map_structure(lambda t: ops.split(t, 2)[i], y_masked)
                                       for i in (0, 1))
            terms["clean"] = clean_loss
            terms["outlier"] = compat.scale_loss_for_distribution(trainer.options.outlier_weight * ops.mean(
                weighted(applied) * outlier_loss(logits, from_logits)))
            if auxiliary is not None:
                terms["auxiliary"] = compat.compiled_loss(trainer, y_own, auxiliary,
                                                          weighted(masked.auxiliary), track=False)
            return terms
        if trainer.options.mode == "paired":
            own = ops.where(masked.applied, masked.own, 0.0)  # unmasked: no second term
            terms["clean"] = clean_loss
            terms["masked"] = compat.compiled_loss(trainer, y_own, y_masked, weighted(own), track=False)
        else:  # regularisation losses of the masked pass enter once, here
            terms["masked"] = keras.Model.compute_loss(trainer, x, y, y_masked, weighted(masked.own), True)
        if masked.partner is not None:
            terms["partner"] = compat.compiled_loss(
                trainer, take(y, masked.partner), y_masked, weighted(masked.pasted), track=False)
        return terms


def outlier_loss(y_pred, from_logits: bool = True):
    """Per-image cross-entropy to the uniform distribution over the ``K``
    classes, ``-(1/K) sum_k log softmax_k(y_pred)`` (outlier exposure,
    Hendrycks et al. 2019); ``y_pred`` are probabilities when not
    ``from_logits``. ``(B,)`` float32."""
    y_pred = ops.cast(y_pred, "float32")
    if y_pred.shape[-1] == 1:
        raise ValueError(
            "masked_as='outlier' needs one output per class (batch, K) with K >= 2; a "
            "single-logit binary classifier has no uniform distribution over classes to "
            "train outliers toward. Use two outputs with a softmax cross-entropy.")
    if from_logits:
        log_p = ops.log_softmax(y_pred, axis=-1)
    else:
        log_p = ops.log(ops.clip(y_pred, keras.backend.epsilon(), 1.0))
    return -ops.mean(log_p, axis=-1)


def attributed_output(model, output, y, y_pred):
    """The labels and predictions of the output whose score is attributed
    (``output``, an index or a name, of a model with several outputs)."""
    if not isinstance(y_pred, (list, tuple, dict)):
        return y, y_pred
    names = list(y_pred) if isinstance(y_pred, dict) else list(getattr(model, "output_names", None) or [])
    count = len(y_pred)
    if output is None and count > 1:
        raise ValueError(
            f"{model.name!r} has {count} outputs ({names or list(range(count))}); choose the "
            f"one whose score GradMix attributes with output= (an index or a name). The "
            f"loss still uses every output."
        )
    output = 0 if output is None else output
    index = names.index(output) if isinstance(output, str) and output in names else output
    if not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"output={output!r} is not one of {names or list(range(count))}.")
    name = names[index] if index < len(names) else None
    pred = y_pred[name] if isinstance(y_pred, dict) else y_pred[index]
    if isinstance(y, dict):
        labels = y[name] if name in y else y[index]
    elif isinstance(y, (list, tuple)):
        labels = y[index]
    else:
        labels = y
    return labels, pred


def labels_as_onehot(trainer, y, y_pred):
    """Sparse ``(B,)``/``(B, 1)``, one-hot or multi-hot ``(B, K)`` labels as
    float ``(B, K)`` weights; for a single-logit output, ``(B, 1)`` 0/1 labels."""
    y = ops.convert_to_tensor(y)
    kind = check_labels(trainer, y, y_pred)
    if kind == "sparse":
        return ops.one_hot(ops.cast(ops.reshape(y, (-1,)), "int32"), y_pred.shape[-1])
    if kind == "binary":
        return ops.reshape(ops.cast(y, "float32"), (-1, 1))
    return ops.cast(y, "float32")


def check_labels(trainer, y, y_pred) -> str:
    """Checks an output of class scores and labels that fit it (shapes only,
    so symbolic tensors do); returns ``"sparse"``, ``"onehot"`` (also
    multi-hot) or ``"binary"`` (a single logit)."""
    name = getattr(getattr(trainer, "model", trainer), "name", "the model")
    if isinstance(y_pred, (list, tuple, dict)):
        raise ValueError(
            f"GradMixModel attributes one output of class scores; {name!r} returned "
            f"{type(y_pred).__name__} of {len(y_pred)} outputs: choose one with output=."
        )
    if len(y_pred.shape) != 2:
        raise ValueError(
            f"GradMixModel needs class scores of shape (batch, classes); "
            f"{name!r} returned shape {tuple(y_pred.shape)}."
        )
    classes = y_pred.shape[-1]
    if isinstance(y, (list, tuple, dict)) or y is None:
        raise ValueError(
            "GradMixModel needs one label tensor per batch, (x, y) or "
            f"(x, y, sample_weight); got y of type {type(y).__name__}."
        )
    shape = tuple(y.shape)
    if classes == 1 and (len(shape) == 1 or shape[1:] == (1,)):
        return "binary"
    if len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1 and classes != 1):
        return "sparse"
    if len(shape) == 2 and shape[-1] == classes:
        return "onehot"
    raise ValueError(
        f"Labels of shape {shape} fit neither sparse class indices (batch,) or "
        f"(batch, 1) nor one-hot (batch, {classes}) for a model with {classes} outputs."
    )
