"""The steps GradMix is measured against, one copy each, for every benchmark.

``CutMix``: the same box maths on a random map (a random centre), the box
pasted from a partner, labels mixed by area; any backend (Keras' own step).
``ReferenceStyle``: paired GradMix at the cost of the authors' code, on
TensorFlow, JAX and PyTorch.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_gradmix import GradMixModel, compat, masks, mixing
from keras_gradmix.objectives import labels_as_onehot
from keras_gradmix.attribution import target_scores


class CutMix(keras.Model):
    """CutMix in the step (the baseline GradMix is held to): a box of random
    centre and Uniform(10-50 %) area pasted from a partner, labels mixed by
    area; ``paired`` also trains on the clean batch. Built from the same maths
    as GradMix (a box around the peak of a random map), so the two steps
    differ by the attribution only. Keras' own train step on every backend:
    paired adds the CutMix term in ``compute_loss``; replace mixes the batch in
    the training ``call``, so the only forward is the mixed one."""

    def __init__(self, model, paired, seed=0):
        super().__init__()
        self.model, self.paired = model, paired
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._mix = None

    def mixed(self, x):
        """``(images, partner, pasted area)`` of one CutMix draw."""
        centres = keras.random.uniform(ops.shape(x)[:3], seed=self.seed_generator)
        area = keras.random.uniform((), 0.1, 0.5, seed=self.seed_generator)
        mask, pasted = masks.box_masks(centres, area, border="clip")  # CutMix clips
        partner = mixing.random_partner(ops.shape(x)[0], seed=self.seed_generator)
        return mixing.apply_fill(x, mask, "mix", partner=partner), partner, pasted

    def call(self, x, training=None):
        if training and not self.paired:
            x, partner, pasted = self.mixed(x)
            self._mix = partner, pasted  # read by compute_loss in the same trace
        return self.model(x, training=training)

    def mixed_loss(self, y, y_mix, partner, pasted):
        loss = compat.compiled_loss(self, y, y_mix, 1.0 - pasted)
        return loss + compat.compiled_loss(self, ops.take(y, partner, axis=0), y_mix, pasted)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not training:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        if not self.paired:
            return self.mixed_loss(y, y_pred, *self._mix)
        images, partner, pasted = self.mixed(x)
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss + self.mixed_loss(y, self(images, training=True), partner, pasted)


class ReferenceStyle(GradMixModel):
    """Paired GradMix with the reference code's cost: the attribution comes
    from a separate clean forward and a backward through every weight (their
    ``L_a.backward()``); the training pass then forwards the clean batch again.
    The norm of those weight gradients is logged, so that no compiler prunes
    the backward it pays for (the reference zeroes them)."""

    def label_score(self, x, y, tap):
        y_pred = self(x, training=True)
        activations = self.tapped_activations(tap, x.shape[1:3])
        score = ops.sum(target_scores(labels_as_onehot(self, y, y_pred), y_pred, "label"))
        return score, activations

    def training_loss(self, x, y, activations, gradients):
        masked = self.masked_batch(x, activations, gradients)
        y_pred = self(x, training=True)
        clean_loss = keras.Model.compute_loss(self, x, y, y_pred, None, True)
        with self.masked_pass_statistics():
            y_masked = self(masked.images, training=True)
        return self.gradmix_loss(x, y, y_pred, clean_loss, y_masked, None, masked), y_pred

    def train_step(self, *args):
        step = {"jax": _reference_step_jax, "torch": _reference_step_torch}
        return step.get(keras.backend.backend(), _reference_step_tensorflow)(self, *args)


def _reference_step_tensorflow(gm, data):
    import tensorflow as tf

    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        with gm.tap(on_output=tape.watch) as tap:
            score, activations = gm.label_score(x, y, tap)
    gradients = tape.gradient(score, activations + gm.trainable_weights)
    maps_grads, weight_grads = gradients[: len(activations)], gradients[len(activations):]
    with tf.GradientTape() as tape:
        loss, _ = gm.training_loss(x, y, activations, maps_grads)
    compat.loss_tracker(gm).update_state(loss)
    weights = gm.trainable_weights
    gm.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    return {"loss": compat.loss_tracker(gm).result(),
            "attribution_grad_norm": tf.linalg.global_norm(weight_grads)}


def _reference_step_jax(gm, state, data):
    import jax

    from keras_gradmix.steps.jax import update_metrics

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)

    def scope(trainable, non_trainable):
        return keras.StatelessScope(
            state_mapping=list(zip(gm.trainable_variables, trainable))
            + list(zip(gm.non_trainable_variables, non_trainable))
            + list(zip(gm.optimizer.variables, optimizer_variables)))

    def updated(scope):
        return [scope.get_current_value(v) if scope.get_current_value(v) is not None
                else v.value for v in gm.non_trainable_variables]

    def attribution_pass(trainable, eps):
        with scope(trainable, non_trainable) as s:
            perturb = iter(eps)
            with gm.tap(on_output=lambda out: out + next(perturb)) as tap:
                score, activations = gm.label_score(x, y, tap)
        return score, (activations, updated(s))

    def shapes():
        with keras.StatelessScope():  # abstract, and its variable updates dropped
            with gm.tap() as tap:
                gm(x, training=True)
            return gm.tapped_activations(tap, x.shape[1:3])

    eps = [jax.numpy.zeros(a.shape, "float32") for a in jax.eval_shape(shapes)]
    (weight_grads, act_grads), (activations, non_trainable) = jax.grad(
        attribution_pass, argnums=(0, 1), has_aux=True)(trainable, eps)

    def loss_fn(trainable):
        with scope(trainable, non_trainable) as s:
            loss, y_pred = gm.training_loss(x, y, activations, act_grads)
        return loss, (y_pred, updated(s))

    (loss, (y_pred, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    trainable, optimizer_variables = gm.optimizer.stateless_apply(
        optimizer_variables, grads, trainable)
    logs, metrics_variables = update_metrics(gm, metrics_variables, loss, x, y, y_pred, None)
    logs["attribution_grad_norm"] = jax.numpy.sqrt(sum(jax.numpy.sum(g * g) for g in weight_grads))
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def _reference_step_torch(gm, data):
    import torch

    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    weights = [v.value for v in gm.trainable_weights]
    with gm.tap(on_output=lambda out: out if out.requires_grad else out.requires_grad_()) as tap:
        score, activations = gm.label_score(x, y, tap)
    gradients = torch.autograd.grad(score, activations + weights, allow_unused=True)
    maps_grads, weight_grads = gradients[: len(activations)], gradients[len(activations):]
    gm.zero_grad()
    loss, _ = gm.training_loss(x, y, [a.detach() for a in activations], list(maps_grads))
    compat.loss_tracker(gm).update_state(loss)
    loss.backward()
    with torch.no_grad():
        gm.optimizer.apply([w.grad for w in weights], gm.trainable_weights)
    norm = torch.sqrt(sum(torch.sum(g * g) for g in weight_grads if g is not None))
    return {"loss": compat.loss_tracker(gm).result(), "attribution_grad_norm": norm}
