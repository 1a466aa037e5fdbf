"""The GradMix train step on the JAX backend: stateless, one jitted function.

Mirrors Keras' built-in JAX ``train_step`` (``stateless_call`` semantics through
a ``StatelessScope``, loss scaling, ``optimizer.stateless_apply``, metrics
variables). The attributed layers' outputs get a zero perturbation ``eps``;
``jax.vjp`` of the clean forward with respect to ``eps`` gives the gradients of
the score with respect to those outputs, from the same forward that the clean
loss uses. All GradMix maths lives in backend-agnostic code.
"""

from __future__ import annotations

import jax
import keras
from jax.extend.core import Literal
from keras.src.backend import StatelessScope


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


def _forward_and_attribute(gm, x, y, sample_weight, training, need_loss):
    """Clean forward; gradients of the score w.r.t. the attributed layers.

    Runs inside a ``StatelessScope`` holding the current variable values.
    Returns ``(y_pred, clean_loss or None, activations, gradients)``.
    """
    gm.check_images(x)
    state = gm.trainable_variables + gm.non_trainable_variables

    def tapped_forward(eps):
        # Variable updates of this forward (BatchNorm statistics, dropout seeds)
        # leave jax.vjp as auxiliary values, then enter the enclosing scope.
        with StatelessScope(state_mapping=[(v, v.value) for v in state]) as scope:
            perturb = iter(eps) if eps is not None else None
            on_output = None if perturb is None else (lambda out: out + next(perturb))
            with gm.tap(on_output=on_output) as tap:
                y_pred = gm(x, training=training)
            activations = gm.tapped_activations(tap)
        return (y_pred, activations), _current(scope, state)

    # The shapes of the perturbations, from an abstract evaluation (no compute).
    shapes = jax.eval_shape(lambda: tapped_forward(None)[0][1])
    eps = [jax.numpy.zeros(s.shape, s.dtype) for s in shapes]
    gm.check_reaches_output(_reaches_output(lambda *e: tapped_forward(list(e))[0][0], eps))
    (y_pred, activations), pullback, updated = jax.vjp(tapped_forward, eps, has_aux=True)
    for variable, value in zip(state, updated):
        variable.assign(value)

    clean_loss = None
    if need_loss or gm.target == "loss":
        clean_loss = gm.clean_loss(x, y, y_pred, sample_weight, training)

    def score(y_pred):
        loss = None
        if gm.target == "loss":
            loss = gm.clean_loss(x, y, y_pred, sample_weight, training)
        return gm.attribution_score(y, y_pred, loss)

    # Gradients w.r.t. the activations only: a pullback from the output to the
    # attributed layers; nothing reaches the parameters (stop_gradient below).
    cotangent = jax.grad(score)(jax.lax.stop_gradient(y_pred))
    (gradients,) = pullback((cotangent, [jax.numpy.zeros_like(a) for a in activations]))
    activations = [jax.lax.stop_gradient(a) for a in activations]
    gradients = [jax.lax.stop_gradient(g) for g in gradients]
    return y_pred, clean_loss, activations, gradients


def attribute(gm, x, y):
    """Activations and score gradients of the attributed layers, inference mode."""
    x = jax.numpy.asarray(x)
    state = gm.trainable_variables + gm.non_trainable_variables
    with StatelessScope(state_mapping=[(v, v.value) for v in state]):
        _, _, activations, gradients = _forward_and_attribute(
            gm, x, y, None, training=False, need_loss=False
        )
    return activations, gradients


def train_step(gm, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    gm.check_compiled()
    x = gm.prepare_inputs(x)

    def loss_fn(trainable):
        mapping = list(zip(gm.trainable_variables, trainable))
        mapping += list(zip(gm.non_trainable_variables, non_trainable))
        mapping += list(zip(gm.optimizer.variables, optimizer_variables))
        with StatelessScope(state_mapping=mapping) as scope:
            y_pred, clean_loss, activations, gradients = _forward_and_attribute(
                gm, x, y, sample_weight, training=True, need_loss=gm.mode == "paired"
            )
            masked = gm.masked_batch(x, activations, gradients)
            with gm.masked_pass_statistics():
                y_masked = gm(masked.images, training=True)
            loss = gm.gradmix_loss(x, y, y_pred, clean_loss, y_masked, sample_weight, masked)
            scaled = gm.optimizer.scale_loss(loss)
        return scaled, (loss, y_pred, _current(scope, gm.non_trainable_variables))

    (_, (loss, y_pred, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable
    )
    trainable, optimizer_variables = gm.optimizer.stateless_apply(
        optimizer_variables, grads, trainable
    )
    logs, metrics_variables = gm._update_metrics_variables(
        metrics_variables, loss, x, y, y_pred, sample_weight
    )
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)
