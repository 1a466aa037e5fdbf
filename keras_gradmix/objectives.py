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
from keras_gradmix.attribution import target_scores


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

    def maskable(self, batch_size):
        """``(B,)`` bool: images that may be masked; None for all."""
        return None

    def loss(self, trainer, x, y, y_pred, clean_loss, y_masked, sample_weight, masked):
        """Total loss of a step from the clean and the masked forward."""
        raise NotImplementedError

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
    are the kept and pasted shares (``label_mode``). Regularisation losses
    enter once: from the clean pass (paired) or the masked pass (replace).
    """

    def check_compiled(self, trainer):
        if not compat.has_compiled_loss(trainer):
            raise ValueError(
                "GradMixModel trains with the loss given to compile(); compile it "
                "with one, e.g. loss='sparse_categorical_crossentropy'."
            )

    def clean_loss(self, trainer, x, y, y_pred, sample_weight=None, training=True):
        # Keras builds the loss symbolically before the first step on some
        # backends: check the labels here, before the loss's own shape error.
        check_labels(trainer, y, y_pred)
        return keras.Model.compute_loss(trainer, x, y, y_pred, sample_weight, training)

    def attribution_score(self, trainer, y, y_pred, clean_loss):
        target = trainer.options.target
        if target == "loss":
            return clean_loss
        return ops.sum(target_scores(labels_as_onehot(trainer, y, y_pred), y_pred, target))

    def loss(self, trainer, x, y, y_pred, clean_loss, y_masked, sample_weight, masked):
        def weighted(w):
            return w if sample_weight is None else w * ops.cast(sample_weight, "float32")

        if trainer.options.mode == "paired":
            own = ops.where(masked.applied, masked.own, 0.0)  # unmasked: no second term
            loss = clean_loss + compat.compiled_loss(trainer, y, y_masked, weighted(own))
        else:  # regularisation losses of the masked pass enter once, here
            own = weighted(masked.own) if masked.partner is not None else sample_weight
            loss = keras.Model.compute_loss(trainer, x, y, y_masked, own, True)
        if masked.partner is not None:
            y_partner = ops.take(y, masked.partner, axis=0)
            loss = loss + compat.compiled_loss(trainer, y_partner, y_masked, weighted(masked.pasted))
        return loss


def labels_as_onehot(trainer, y, y_pred):
    """Sparse ``(B,)``/``(B, 1)`` or one-hot ``(B, K)`` labels as float one-hot."""
    y = ops.convert_to_tensor(y)
    if check_labels(trainer, y, y_pred) == "sparse":
        return ops.one_hot(ops.cast(ops.reshape(y, (-1,)), "int32"), y_pred.shape[-1])
    return ops.cast(y, "float32")


def check_labels(trainer, y, y_pred) -> str:
    """Checks one output of class scores and labels that fit it (shapes only,
    so symbolic tensors do); returns ``"sparse"`` or ``"onehot"``."""
    name = getattr(getattr(trainer, "model", trainer), "name", "the model")
    if isinstance(y_pred, (list, tuple, dict)):
        raise ValueError(
            f"GradMixModel needs a model with one output (class scores); "
            f"{name!r} returned {type(y_pred).__name__} of {len(y_pred)} outputs."
        )
    if len(y_pred.shape) != 2:
        raise ValueError(
            f"GradMixModel needs class scores of shape (batch, classes); "
            f"{name!r} returned shape {tuple(y_pred.shape)}."
        )
    classes = y_pred.shape[-1]
    options = getattr(trainer, "options", None)
    if classes == 1 and options is not None and options.target != "loss":
        raise ValueError(
            f"target={options.target!r} needs class scores (batch, classes >= 2); "
            f"{name!r} has a single output unit. Use target='loss', or a 2-unit "
            f"softmax output."
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
        f"(batch, 1) nor one-hot (batch, {classes}) for a model with {classes} outputs."
    )
