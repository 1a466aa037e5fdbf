"""The GradMix train step on the JAX backend: stateless, one jitted function.

Mirrors Keras' built-in JAX ``train_step`` (``stateless_call`` semantics through
a ``StatelessScope`` that collects the forward's ``add_loss`` losses, loss
scaling, ``optimizer.stateless_apply``, metrics variables). The attributed
layers' outputs get a zero perturbation ``eps``; ``jax.vjp`` of the clean
forward with respect to ``eps`` gives the gradients of the score with respect
to those outputs, from the same forward that the clean loss uses. A bad batch
applies no update (:mod:`keras_gradmix.guard`). All GradMix maths lives in
backend-agnostic code.
"""

from __future__ import annotations

import jax
import keras
from jax.extend.core import Literal

from keras_gradmix import compat, guard
from keras_gradmix.inputs import batch_size, input_grid


def _current(scope, variables):
    """Values of ``variables`` as written in ``scope`` (or as they were)."""
    values = []
    for variable in variables:
        value = scope.get_current_value(variable)
        values.append(variable.value if value is None else value)
    return values


def _reaches_output(fn, args):
    """For each input of ``fn``, whether its first output depends on it.

    A dependency walk over the traced program (trace time only): JAX returns
    zero gradients, not None, for an input the output does not depend on.
    """
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    used = {v for v in jaxpr.outvars[:1] if not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        if any(v in used for v in eqn.outvars):
            used.update(v for v in eqn.invars if not isinstance(v, Literal))
    return [v in used for v in jaxpr.invars]


def _forward(gm, state, x, training, tap=None):
    """``gm(x)`` in its own scope: ``(y_pred, losses, updated state)``, where
    ``losses`` are the forward's ``add_loss``/regularisation losses."""
    with keras.StatelessScope(state_mapping=[(v, v.value) for v in state], collect_losses=True) as scope:
        y_pred = gm(x, training=training)
        losses = gm.losses
    return y_pred, losses, _current(scope, state)


def _forward_and_attribute(gm, x, y, sample_weight, training, need_loss, paths=None):
    """Clean forward; gradients of the score w.r.t. the attributed layers.

    Runs inside a ``StatelessScope`` holding the current variable values.
    Returns ``(y_pred, clean_loss or None, activations, gradients)``.
    """
    state = gm.trainable_variables + gm.non_trainable_variables

    def tapped_forward(eps):
        # Variable updates of this forward (BatchNorm statistics, dropout seeds)
        # and its losses leave jax.vjp as auxiliary values.
        perturb = iter(eps) if eps is not None else None
        on_output = None if perturb is None else (lambda out: out + next(perturb))
        with gm.tap(on_output=on_output, paths=paths) as tap:
            y_pred, losses, updated = _forward(gm, state, x, training)
        activations = gm.tapped_activations(tap, input_grid(x), paths)
        return (y_pred, activations), (updated, losses)

    # The shapes of the perturbations, from an abstract evaluation (no compute).
    shapes = jax.eval_shape(lambda: tapped_forward(None)[0][1])
    eps = [jax.numpy.zeros(s.shape, s.dtype) for s in shapes]
    gm.check_reaches_output(_reaches_output(lambda *e: tapped_forward(list(e))[0][0], eps))
    (y_pred, activations), pullback, (updated, losses) = jax.vjp(tapped_forward, eps, has_aux=True)
    for variable, value in zip(state, updated):
        variable.assign(value)

    def loss_of(y_pred):
        with compat.forward_losses(gm, losses):
            return gm.clean_loss(x, y, y_pred, sample_weight, training)

    clean_loss = loss_of(y_pred) if need_loss else None

    def score(y_pred):
        return gm.attribution_score(y, y_pred, loss_of(y_pred) if gm.objective.score_needs_loss(gm.options) else None)

    # Gradients w.r.t. the activations only: a pullback from the output to the
    # attributed layers; nothing reaches the parameters (stop_gradient below).
    cotangent = jax.grad(score)(jax.lax.stop_gradient(y_pred))
    (gradients,) = pullback((cotangent, [jax.numpy.zeros_like(a) for a in activations]))
    activations = [jax.lax.stop_gradient(a) for a in activations]
    gradients = [jax.lax.stop_gradient(g) for g in gradients]
    return y_pred, clean_loss, activations, gradients


def attribute(attributor, x, y, paths=None, score=None):
    """Activations and gradients of ``paths`` (by default the attributed
    layers) from one inference-mode forward of ``attributor`` (its
    :meth:`~keras_gradmix.Attributor.score`, or ``score(x, y, y_pred)``):
    the gradient with respect to a zero perturbation of their outputs."""
    x = keras.tree.map_structure(jax.numpy.asarray, x)
    attributor.ready(x)
    model = attributor.model
    state = model.trainable_variables + model.non_trainable_variables

    def tapped_forward(eps):
        perturb = iter(eps) if eps is not None else None
        on_output = None if perturb is None else (lambda out: out + next(perturb))
        with attributor.tap(on_output=on_output, paths=paths) as tap:
            y_pred = attributor.forward(x)
        return y_pred, attributor.tapped_activations(tap, input_grid(x), paths)

    def value(eps):
        y_pred, activations = tapped_forward(eps)
        value = attributor.score(y, y_pred) if score is None else score(x, y, y_pred)
        return value, activations

    with keras.StatelessScope(state_mapping=[(v, v.value) for v in state]):
        shapes = jax.eval_shape(lambda: tapped_forward(None)[1])
        eps = [jax.numpy.zeros(s.shape, s.dtype) for s in shapes]
        attributor.check_reaches_output(
            _reaches_output(lambda *e: tapped_forward(list(e))[0], eps), paths)
        gradients, activations = jax.grad(value, has_aux=True)(eps)
    return activations, gradients


def input_gradient(fn, x):
    """The gradient of the scalar ``fn(x)`` with respect to the input ``x``
    (``fn`` may call a Keras model in inference mode: it writes no state)."""
    return jax.grad(fn)(jax.numpy.asarray(x))


def train_step(gm, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    x = gm.objective.prepare_inputs(x)
    gm.check_step_ready(x)

    def loss_fn(trainable):
        mapping = list(zip(gm.trainable_variables, trainable))
        mapping += list(zip(gm.non_trainable_variables, non_trainable))
        mapping += list(zip(gm.optimizer.variables, optimizer_variables))
        mapping += list(zip(gm.metrics_variables, metrics_variables))  # per-output losses
        with keras.StatelessScope(state_mapping=mapping) as scope:
            y_pred, clean_loss, activations, gradients = _forward_and_attribute(
                gm, x, y, sample_weight, training=True, need_loss=gm.needs_clean_loss
            )
            masked = gm.masked_batch(x, activations, gradients)
            model_state = gm.trainable_variables + gm.non_trainable_variables
            with gm.masked_pass_statistics():
                y_masked, losses, updated = _forward(gm, model_state, masked.images, True)
                for variable, value in zip(model_state, updated):
                    variable.assign(value)
            with compat.forward_losses(gm, losses):
                terms = gm.gradmix_terms(x, y, y_pred, clean_loss, y_masked, sample_weight, masked)
            loss = sum(terms.values())
            scaled = gm.optimizer.scale_loss(loss)
        updated = _current(scope, gm.non_trainable_variables), _current(scope, gm.metrics_variables)
        return scaled, (loss, y_pred, updated, gm.step_problems(terms, x, y, y_pred), masked)

    (_, (loss, y_pred, (updated, metrics_variables), code, masked)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(trainable)
    with keras.StatelessScope(state_mapping=list(zip(gm.non_trainable_variables, updated))) as scope:
        ok = guard.verdict(gm, code, grads)
    updated = _current(scope, gm.non_trainable_variables)
    # A bad batch keeps the statistics its forwards wrote (BatchNorm) as they were.
    statistics = {id(v) for v in gm.model.non_trainable_variables}
    non_trainable = [jax.numpy.where(ok, new, old) if id(v) in statistics else new
                     for v, new, old in zip(gm.non_trainable_variables, updated, non_trainable)]
    trainable, optimizer_variables = keras.ops.cond(
        ok, lambda: gm.optimizer.stateless_apply(optimizer_variables, grads, trainable),
        lambda: (list(trainable), list(optimizer_variables)))
    logs, metrics_variables = update_metrics(
        gm, metrics_variables, loss, x, y, y_pred, sample_weight, masked)
    logs[guard.HELD] = jax.numpy.logical_not(ok).astype("int32")
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def update_metrics(gm, metrics_variables, loss, x, y, y_pred, sample_weight, masked=None):
    """The loss tracker, the compiled metrics and (given the masked batch) the
    masking trackers, statelessly: ``(logs, values)``."""
    mapping = list(zip(gm.metrics_variables, metrics_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        compat.loss_tracker(gm).update_state(loss, sample_weight=batch_size(x))
        logs = gm.compute_metrics(x, y, y_pred, sample_weight)
        if masked is not None:
            logs = {**logs, **gm.track_masking(masked, batch_size(x))}
    return logs, _current(scope, gm.metrics_variables)
