"""The GradMix train step on the PyTorch backend (autograd).

Mirrors Keras' built-in torch ``train_step`` (``zero_grad``, loss tracking,
loss scaling, ``backward``, ``optimizer.apply``); a bad batch applies no
update (:mod:`keras_gradmix.guard`). The attribution gradients
come from ``torch.autograd.grad`` on the clean forward's graph, which is kept
for the update: they never land in the parameters' ``.grad``. All GradMix maths
lives in backend-agnostic code.
"""

from __future__ import annotations

import keras
from keras import ops
import torch

from keras_gradmix import compat, guard
from keras_gradmix.inputs import batch_size, input_grid


def _require_grad(output):
    # The output of a layer with nothing trainable before it is a leaf:
    # mark it, so that the score can be differentiated with respect to it.
    return output if output.requires_grad else output.requires_grad_()


def _forward_and_attribute(gm, x, y, sample_weight, training, need_loss, paths=None):
    """Clean forward; gradients of the score w.r.t. the attributed layers.

    Returns ``(y_pred, clean_loss or None, activations, gradients)``; the
    graph of ``y_pred`` and ``clean_loss`` is kept.
    """
    with gm.tap(on_output=_require_grad, paths=paths) as tap:
        y_pred = gm(x, training=training)
    activations = gm.tapped_activations(tap, input_grid(x), paths)
    clean_loss = None
    if need_loss:
        clean_loss = gm.clean_loss(x, y, y_pred, sample_weight, training)
    score = gm.attribution_score(y, y_pred, clean_loss)
    gradients = torch.autograd.grad(score, activations, retain_graph=True, allow_unused=True)
    gm.check_reaches_output([g is not None for g in gradients])
    activations = [a.detach() for a in activations]
    return y_pred, clean_loss, activations, list(gradients)


def attribute(attributor, x, y, paths=None, score=None):
    """Activations and gradients of ``paths`` (by default the attributed
    layers) from one inference-mode forward of ``attributor`` (its
    :meth:`~keras_gradmix.Attributor.score`, or ``score(x, y, y_pred)``)."""
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
    attributor.ready(x)
    with attributor.tap(on_output=_require_grad, paths=paths) as tap:
        y_pred = attributor.forward(x)
    activations = attributor.tapped_activations(tap, input_grid(x), paths)
    value = attributor.score(y, y_pred) if score is None else score(x, y, y_pred)
    gradients = torch.autograd.grad(value, activations, allow_unused=True)
    attributor.check_reaches_output([g is not None for g in gradients], paths)
    return [a.detach() for a in activations], list(gradients)


def _averaged_over_processes(gradients):
    """Under ``torch.distributed`` with several processes (DDP), each gradient
    averaged over them in place: what ``DistributedDataParallel``'s reducer
    does for Keras' own step. GradMix's step forwards twice (clean, masked)
    before one backward and differentiates the attribution in between, so it
    calls the model itself and all-reduces here (DDP's hooks stay idle without
    a forward through the DDP module: nothing is reduced twice)."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return gradients
    world = distributed.get_world_size()
    if world == 1:
        return gradients
    with torch.no_grad():
        for gradient in gradients:
            if gradient is not None:
                distributed.all_reduce(gradient)
                gradient.div_(world)
    return gradients


def input_gradient(fn, x):
    """The gradient of the scalar ``fn(x)`` with respect to the input ``x``
    (eager; nothing lands in the parameters' ``.grad``)."""
    x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(fn(x), [x])
    return gradient


def train_step(gm, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    x = gm.objective.prepare_inputs(x)
    gm.check_step_ready(x)
    statistics = gm.model.non_trainable_variables  # BatchNorm's, written by the forwards
    before = guard.snapshot(statistics)
    gm.zero_grad()
    y_pred, clean_loss, activations, gradients = _forward_and_attribute(
        gm, x, y, sample_weight, training=True, need_loss=gm.needs_clean_loss
    )
    with torch.no_grad():
        masked = gm.masked_batch(x, activations, gradients)
    with gm.masked_pass_statistics():
        y_masked = gm(masked.images, training=True)
    terms = gm.gradmix_terms(x, y, y_pred, clean_loss, y_masked, sample_weight, masked)
    loss = sum(terms.values())
    compat.loss_tracker(gm).update_state(loss, sample_weight=batch_size(x))
    if gm.optimizer is not None:
        loss = gm.optimizer.scale_loss(loss)

    trainable_weights = list(gm.trainable_weights)
    gradients = []
    if trainable_weights:
        loss.backward()
        gradients = _averaged_over_processes([v.value.grad for v in trainable_weights])
    with torch.no_grad():
        ok = guard.verdict(gm, gm.step_problems(terms, x, y, y_pred), gradients)
        if trainable_weights:
            guard.apply_if(gm.optimizer, ok, gradients, trainable_weights)
        guard.keep_if_bad(ok, statistics, before)
    logs = gm.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    masking = gm.track_masking(masked, batch_size(x))
    return {**logs, **masking, guard.HELD: ops.cast(ops.logical_not(ok), "int32")}
