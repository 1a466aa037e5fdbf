"""Every use of Keras' private API, in one place.

GradMix's step mirrors Keras' built-in ``train_step`` on each backend, which
needs a few things Keras does not export: the compiled loss without the
regularisation losses, the loss tracker, the forward-pass losses of a stateless
JAX call, the child layers of a plain layer and the consumers of a functional
graph's tensors. They are reached only through this module, whose supported
Keras range is ``KERAS_RANGE`` (also in ``pyproject.toml``); CI runs the
TensorFlow suite on the lowest and the newest version of that range.
"""

from __future__ import annotations

import contextlib

import keras

# Lowest supported Keras: CI tests it beside the newest (Makefile `test-keras-min`).
KERAS_MIN = "3.10.0"
KERAS_RANGE = f">={KERAS_MIN},<4"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


if _version(keras.__version__) < _version(KERAS_MIN):
    raise ImportError(
        f"keras_gradmix needs Keras {KERAS_RANGE}; this is Keras {keras.__version__}. "
        f"Upgrade with: pip install -U 'keras{KERAS_RANGE}'."
    )


def has_compiled_loss(model) -> bool:
    """Whether ``compile()`` was given a loss."""
    return getattr(model, "_compile_loss", None) is not None


def compiled_loss(model, y, y_pred, sample_weight=None, track: bool = True):
    """The loss given to ``compile()`` alone, without regularisation losses.

    ``track=False`` leaves the per-output loss metrics of a multi-output model
    (``"<output>_loss"``) as they were, so that they log the clean batch only.
    """
    loss = model._compile_loss
    if track:
        return loss(y, y_pred, sample_weight)
    variables = [v for metric in getattr(loss, "metrics", None) or [] for v in metric.variables]
    saved = [keras.ops.copy(v) for v in variables]
    value = loss(y, y_pred, sample_weight)
    for variable, before in zip(variables, saved):
        variable.assign(before)
    return value


# Loss names and functions whose ``from_logits`` defaults to False.
_PROBABILITY_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy",
                       "categorical_focal_crossentropy")


def user_loss(model, output=None):
    """The loss given to ``compile()`` (for ``output``, an index or a name,
    when it was given one per output): a Loss, a name or a function; None
    when there is none or it cannot tell which."""
    loss = getattr(getattr(model, "_compile_loss", None), "_user_loss", None)
    if isinstance(loss, dict):
        return loss.get(output) if isinstance(output, str) else None
    if isinstance(loss, (list, tuple)):
        return loss[output or 0] if len(loss) == 1 or isinstance(output, int) else None
    return loss


def loss_name(loss) -> str:
    """``"sparse_categorical_crossentropy"`` for that loss as a name, a function
    or a ``SparseCategoricalCrossentropy`` object (snake case of the class)."""
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "__name__", None) or type(loss).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def loss_from_logits(model, output=None):
    """Whether the compiled loss (see :func:`user_loss`) reads logits: a Keras
    loss's ``from_logits``, False for the cross-entropy names and functions
    (their default), None when it cannot tell (a custom loss)."""
    loss = user_loss(model, output)
    if hasattr(loss, "from_logits"):
        return bool(loss.from_logits)
    return False if loss is not None and loss_name(loss) in _PROBABILITY_LOSSES else None


def loss_tracker(model):
    """The ``Mean`` metric behind the ``"loss"`` log."""
    return model._loss_tracker


def scale_loss_for_distribution(loss):
    """A loss computed outside a Keras ``Loss`` scaled as Keras' losses are
    under ``tf.distribute`` (divided by the replicas), so the gradients sum right."""
    from keras.src.losses.loss import scale_loss_for_distribution as scale

    return scale(loss)


def unscale_loss_for_distribution(loss):
    """The loss as logged under ``tf.distribute`` (Keras' losses divide by replicas)."""
    from keras.src.losses.loss import unscale_loss_for_distribution as unscale

    return unscale(loss)


@contextlib.contextmanager
def forward_losses(model, losses):
    """``model.losses`` returns ``losses`` (the ``add_loss``/activity losses a
    stateless JAX forward collected) inside the block, as Keras' JAX step does."""
    if not losses:
        yield
        return
    saved = model._losses_override
    model._losses_override = list(losses)
    try:
        yield
    finally:
        model._losses_override = saved


def child_layers(layer) -> list:
    """Direct sub-layers of any layer or model (``Model.layers`` for all)."""
    return [
        child
        for child in layer._flatten_layers(include_self=False, recursive=False)
        if not isinstance(child, keras.layers.InputLayer)
    ]


def all_layers(layer) -> list:
    """``layer`` and every layer inside it, recursively."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


def graph_layers_from_inputs(model) -> list:
    """Every layer a functional model's inputs flow into, whether or not it
    reaches the outputs (``model.layers`` lists only those that do)."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # subclassed: no graph
        return []
    seen, found = set(), []
    stack = [t._keras_history.operation for t in inputs if hasattr(t, "_keras_history")]
    while stack:
        operation = stack.pop()
        if id(operation) in seen:
            continue
        seen.add(id(operation))
        found.append(operation)
        stack.extend(node.operation for node in getattr(operation, "_outbound_nodes", []))
    return [op for op in found if isinstance(op, keras.layers.Layer)]


def producing_layer(tensor):
    """The layer whose output a functional graph's tensor is."""
    return tensor._keras_history.operation


def forget_step_functions(model) -> None:
    """Drops the compiled train/test functions after a failed ``fit``.

    On TensorFlow a trace that raised leaves a ``tf.function`` whose next call
    is not its first, so the variables the first step creates (optimizer
    slots, metrics) can no longer be made ("Creating variables on a non-first
    call to a function decorated with tf.function"); plain Keras models share
    this. Keras rebuilds these functions when they are None.
    """
    model.train_function = None
    model.test_function = None


def build_before_tracing(model, batch) -> None:
    """Builds a compiled model's optimizer, metrics and loss state from
    ``batch``'s shapes (``(x, y, sample_weight)``: arrays or anything with a
    ``shape`` and ``dtype``), as Keras' JAX and PyTorch trainers do before
    their first step.

    Keras' TensorFlow trainer, without a distribution strategy, leaves this to
    the first trace of its train function; the variables that trace creates
    make ``tf.function`` trace the step a second time. GradMix's step (a
    second backward pass) is costly to trace, so building first halves the
    first epoch's tracing. A no-op on the other backends, when built, and on a
    Keras without ``_symbolic_build`` (training is the same, traced twice).
    """
    build = getattr(model, "_symbolic_build", None)
    compiled = getattr(model, "optimizer", None) is not None
    if keras.backend.backend() != "tensorflow" or build is None or not compiled:
        return
    with model.distribute_strategy.scope():
        build(data_batch=batch)
