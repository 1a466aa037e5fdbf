"""Nothing bad reaches the weights, on any batch, on any backend.

Every train step judges its own update on the device: the floating inputs, the
loss terms and the gradients must be finite, and the labels must be classes of
the model. (The inputs are checked themselves, not through the loss: a fused
kernel may turn a NaN pixel into a finite activation, e.g. oneDNN's
Conv2D+ReLU under ``mixed_float16``, and the loss then says nothing.) A bad
batch applies no update: the optimizer step is skipped (``ops.cond``, as
Keras' ``LossScaleOptimizer`` skips non-finite steps) and the statistics its
forward passes wrote (BatchNorm) are put back, so weights and optimizer state
stay exactly as they were. The first bad batch (what, epoch, batch) is kept in
a variable, and every later step of the epoch applies no update either, so the
weights are those before the bad batch. Each step's logs say whether it was
held (``HELD``); Keras reads the logs on the host after every step anyway (in
its callback thread, on JAX and PyTorch), so ``fit`` ends the epoch at the next
step's end (:class:`~keras_gradmix.epochs.EpochCounter`) and stops with an
error naming the problem, the epoch and the batch, read from the record; no
other host read is added, so Keras' asynchronous dispatch stays on. (PyTorch runs eagerly: there the skip itself is decided on the host,
as ``LossScaleOptimizer`` does.)
"""

from __future__ import annotations

import keras
from keras import ops

from keras_gradmix.objectives import TERMS

PROBLEMS = (*TERMS, "gradients", "labels", "inputs")  # bit i of a step's problem code
HELD = "gradmix_held"  # in a step's logs: 1 if it applied no update (taken out by fit)


def batch_problems(terms: dict, bad_labels=None, inputs=None):
    """An int32 code: bit ``PROBLEMS.index(term)`` for each non-finite loss
    term, the ``labels`` bit when ``bad_labels`` (a bool scalar) is true, and
    the ``inputs`` bit when a floating tensor of ``inputs`` (a tensor or a
    structure of them) holds a NaN or inf (integer ones, token ids, are skipped)."""
    names = [name for name in TERMS if name in terms]
    values = ops.stack([ops.cast(ops.reshape(terms[n], ()), "float32") for n in names])
    bits = ops.convert_to_tensor([2 ** PROBLEMS.index(n) for n in names], "int32")
    code = ops.sum(ops.where(ops.isfinite(values), 0, bits))
    if bad_labels is not None:
        code = code + ops.where(bad_labels, 2 ** PROBLEMS.index("labels"), 0)
    if inputs is not None:
        floats = [t for t in keras.tree.flatten(inputs)
                  if "float" in keras.backend.standardize_dtype(t.dtype)]
        code = code + ops.where(all_finite(floats), 0, 2 ** PROBLEMS.index("inputs"))
    return code


def all_finite(tensors):
    """Whether every tensor is finite (None ones are skipped)."""
    checks = [ops.all(ops.isfinite(t)) for t in tensors if t is not None]
    return ops.all(ops.stack(checks)) if checks else ops.convert_to_tensor(True)


def scales_loss(optimizer) -> bool:
    """Whether ``optimizer`` is a ``LossScaleOptimizer`` (``compile`` wraps
    the optimizer in one under ``mixed_float16``)."""
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def verdict(gm, code, gradients):
    """Records the batch (:meth:`GradMixModel.guard_record`) and returns a
    bool scalar: whether its update may be applied (no problem in it and none
    earlier in the epoch). Assigns variables: inside a JAX step, call it in a
    ``StatelessScope``.

    Under a ``LossScaleOptimizer`` non-finite gradients of finite loss terms
    are an overflow of the scaled loss: the optimizer's business (it skips the
    step and lowers the scale, as in plain Keras), not a bad batch. A
    non-finite loss term (a NaN pixel, an overflow of the forward itself) is
    still one."""
    if not scales_loss(gm.optimizer):
        code = code + ops.where(all_finite(gradients), 0, 2 ** PROBLEMS.index("gradients"))
    code = shared(code)  # every replica records, and skips, the same
    record, batch = gm.guard_variables
    latched = ops.not_equal(record.value[0], 0)
    first = ops.not_equal(code, 0) & ops.logical_not(latched)
    entry = ops.stack([ops.cast(code, "int32"), ops.cast(gm.epoch.value, "int32"),
                       ops.cast(batch.value, "int32")])
    record.assign(ops.where(first, entry, record.value))
    batch.assign(batch.value + 1)
    return ops.equal(code, 0) & ops.logical_not(latched)


def shared(code):
    """Under ``tf.distribute`` with several replicas, or ``torch.distributed``
    with several processes, the union of every replica's problem code (their
    batches differ: one bad shard is every replica's bad batch, so all skip the
    update, record the same batch and raise the same error); else ``code``.
    (A JAX step sees the global batch already.)"""
    bits = ops.convert_to_tensor([2**i for i in range(len(PROBLEMS))], "int32")
    flags = ops.cast(ops.not_equal((ops.cast(code, "int32") // bits) % 2, 0), "float32")
    total = _sum_over_replicas(flags)
    if total is None:
        return code
    return ops.sum(ops.where(total > 0, bits, 0))


def _sum_over_replicas(values):
    """``values`` summed over the replicas or processes, or None if there is one."""
    if keras.backend.backend() == "torch":
        import torch

        distributed = torch.distributed
        if not (distributed.is_available() and distributed.is_initialized()) \
                or distributed.get_world_size() == 1:
            return None
        total = torch.as_tensor(values).clone()
        distributed.all_reduce(total)
        return total
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def apply_if(optimizer, ok, gradients, variables) -> None:
    """``optimizer.apply(gradients, variables)`` only where ``ok`` (stateful
    backends); the optimizer's state (slots, iterations) is untouched otherwise."""
    if not optimizer.built:  # its variables cannot be made inside a branch
        optimizer.build(variables)

    def apply():
        optimizer.apply(gradients, variables)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.__internal__.distribute.strategy_supports_no_merge_call():
            # As LossScaleOptimizer: a cond whose branch calls merge_call must
            # run in the cross-replica context.
            def cross_replica(distribution, ok, gradients, variables):
                def apply_each():
                    distribution.extended.call_for_each_replica(
                        optimizer.apply, args=(gradients, variables))

                # Every replica holds the same ok (see shared()): take the first.
                first = distribution.experimental_local_results(ok)[0]
                ops.cond(first, apply_each, lambda: None)

            tf.distribute.get_replica_context().merge_call(
                cross_replica, args=(ok, gradients, variables))
            return
    ops.cond(ok, apply, lambda: None)


def snapshot(variables) -> list:
    """Copies of the variables' values (not the variables)."""
    return [ops.copy(v) for v in variables]


def keep_if_bad(ok, variables, before) -> None:
    """Puts ``before`` back into ``variables`` unless ``ok``."""
    for variable, value in zip(variables, before):
        variable.assign(ops.where(ok, variable.value, value))


def message(record, call: str = "fit") -> tuple[type, str] | None:
    """The error for a record ``(code, epoch, batch)`` of ``fit`` (or of one
    ``train_on_batch`` call); None if no batch was bad."""
    code, epoch, batch = (int(v) for v in record)
    if not code:
        return None
    terms = [name for bit, name in enumerate(TERMS) if code & 2**bit]
    where = f"at epoch {epoch}, batch {batch}" if call == "fit" else "in this train_on_batch batch"
    problems = []
    if code & 2 ** PROBLEMS.index("inputs"):
        problems.append(f"the inputs are not finite {where} (NaN or inf values in x; a model "
                        f"that reads them on purpose trains with check_inputs=False)")
    if terms:
        problems.append(
            f"the loss is not finite {where}: the {' and '.join(terms)} term"
            f"{'s' if len(terms) > 1 else ''} ({', '.join(repr(n) for n in terms)} in "
            f"keras_gradmix.objectives.TERMS)")
    if code & 2 ** PROBLEMS.index("gradients"):
        problems.append(f"the gradients are not finite {where}")
    if code & 2 ** PROBLEMS.index("labels"):
        problems.append(
            f"some labels {where} are not classes of the model (class indices must lie in "
            f"[0, classes)); remap or drop them")
    not_finite = terms or code & (2 ** PROBLEMS.index("gradients") | 2 ** PROBLEMS.index("inputs"))
    error = FloatingPointError if not_finite else ValueError
    outcome = (
        "No update was applied from that batch on: the weights and the optimizer state are "
        "those before it (the batch counts the steps of the epoch from 0), and fit stopped."
        if call == "fit" else
        "No update was applied: the weights and the optimizer state are those before the call.")
    return error, (
        f"GradMix: {'; '.join(problems)}. {outcome} Usual causes: a learning rate too high, "
        f"an overflow of the forward pass in float16, NaN/inf pixels or labels out of range in "
        f"the data.")
