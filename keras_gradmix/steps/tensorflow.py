"""The GradMix train step on the TensorFlow backend (GradientTape).

Mirrors Keras' built-in TensorFlow ``train_step`` (loss tracking, loss
scaling, ``apply_gradients``, ``compute_metrics``), so mixed precision and
``tf.distribute`` keep working; a bad batch applies no update
(:mod:`keras_gradmix.guard`). All GradMix maths lives in backend-agnostic
code; this module only tapes and differentiates.
"""

from __future__ import annotations

import keras
from keras import ops
import tensorflow as tf

from keras_gradmix import compat, guard
from keras_gradmix.inputs import batch_size, input_grid


def _forward_and_attribute(gm, tape, x, y, sample_weight, training, need_loss, paths=None):
    """Clean forward under ``tape``; gradients of the score w.r.t. the layers.

    Returns ``(y_pred, clean_loss or None, activations, gradients)``.
    """
    with gm.tap(on_output=tape.watch, paths=paths) as tap:
        y_pred = gm(x, training=training)
    activations = gm.tapped_activations(tap, input_grid(x), paths)
    clean_loss = None
    if need_loss:
        clean_loss = gm.clean_loss(x, y, y_pred, sample_weight, training)
    score = gm.attribution_score(y, y_pred, clean_loss)
    # Gradients w.r.t. the activations only: nothing reaches the parameters.
    with tape.stop_recording():
        gradients = tape.gradient(score, activations)
    gm.check_reaches_output([g is not None for g in gradients])
    return y_pred, clean_loss, activations, gradients


def attribute(attributor, x, y, paths=None, score=None):
    """Activations and gradients of ``paths`` (by default the attributed
    layers) from one inference-mode forward of ``attributor`` (its
    :meth:`~keras_gradmix.Attributor.score`, or ``score(x, y, y_pred)``)."""
    x = keras.tree.map_structure(tf.convert_to_tensor, x)
    attributor.ready(x)
    with tf.GradientTape() as tape:
        with attributor.tap(on_output=tape.watch, paths=paths) as tap:
            y_pred = attributor.forward(x)
        activations = attributor.tapped_activations(tap, input_grid(x), paths)
        value = attributor.score(y, y_pred) if score is None else score(x, y, y_pred)
    gradients = tape.gradient(value, activations)
    attributor.check_reaches_output([g is not None for g in gradients], paths)
    return activations, gradients


def input_gradient(fn, x):
    """The gradient of the scalar ``fn(x)`` with respect to the input ``x``
    (eager; e.g. ODIN's input perturbation)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return tape.gradient(value, x)


def train_step(gm, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    x = gm.objective.prepare_inputs(x)
    gm.check_step_ready(x)
    statistics = gm.model.non_trainable_variables  # BatchNorm's, written by the forwards
    before = guard.snapshot(statistics)
    # One persistent tape: the clean forward serves both the attribution and,
    # in paired mode, the clean loss; no second clean forward.
    with tf.GradientTape(persistent=True) as tape:
        y_pred, clean_loss, activations, gradients = _forward_and_attribute(
            gm, tape, x, y, sample_weight, training=True, need_loss=gm.needs_clean_loss
        )
        with tape.stop_recording():
            masked = gm.masked_batch(x, activations, gradients)
        with gm.masked_pass_statistics():
            y_masked = gm(masked.images, training=True)
        terms = gm.gradmix_terms(x, y, y_pred, clean_loss, y_masked, sample_weight, masked)
        loss = sum(terms.values())
        compat.loss_tracker(gm).update_state(
            compat.unscale_loss_for_distribution(loss), sample_weight=batch_size(x)
        )
        if gm.optimizer is not None:
            loss = gm.optimizer.scale_loss(loss)

    trainable_weights = gm.trainable_weights
    gradients = tape.gradient(loss, trainable_weights)
    del tape
    ok = guard.verdict(gm, gm.step_problems(terms, x, y, y_pred), gradients)
    guard.apply_if(gm.optimizer, ok, gradients, trainable_weights)
    guard.keep_if_bad(ok, statistics, before)
    logs = gm.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    masking = gm.track_masking(masked, batch_size(x))
    return {**logs, **masking, guard.HELD: ops.cast(ops.logical_not(ok), "int32")}
