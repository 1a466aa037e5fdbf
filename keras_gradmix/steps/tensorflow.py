"""The GradMix train step on the TensorFlow backend (GradientTape).

Mirrors Keras' built-in TensorFlow ``train_step`` (loss tracking, loss
scaling, ``apply_gradients``, ``compute_metrics``), so mixed precision and
``tf.distribute`` keep working. All GradMix maths lives in backend-agnostic
code; this module only tapes and differentiates.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution


def train_step(gm, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    gm.check_compiled()
    gm.check_images(x)
    # One persistent tape: the clean forward serves both the attribution and,
    # in paired mode, the clean loss; no second clean forward.
    with tf.GradientTape(persistent=True) as tape:
        with gm.tap(on_output=tape.watch) as tap:
            y_pred = gm(x, training=True)
        y_onehot = gm.labels_as_onehot(y, y_pred)
        activation = gm.tapped_activation(tap)
        clean_loss = None
        if gm.mode == "paired" or gm.target == "loss":
            clean_loss = gm._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
        score = gm.attribution_target(y_onehot, y_pred, clean_loss)
        # Attribution: gradients w.r.t. the activation only, so nothing of it
        # reaches the parameters; the masked batch is a constant.
        with tape.stop_recording():
            gradient = tape.gradient(score, activation)
            if gradient is None:
                raise ValueError(
                    f"The output of {gm.model.name!r} does not depend on layer "
                    f"{gm.layer!r}; attribute a layer on the path to the output."
                )
            x_masked, kept, partner = gm.masked_batch(x, activation, gradient)
        with gm.masked_pass_statistics():
            y_masked = gm(x_masked, training=True)
        loss = gm.gradmix_loss(x, y, clean_loss, y_masked, sample_weight, kept, partner)
        gm._loss_tracker.update_state(
            unscale_loss_for_distribution(loss), sample_weight=tf.shape(x)[0]
        )
        if gm.optimizer is not None:
            loss = gm.optimizer.scale_loss(loss)

    trainable_weights = gm.trainable_weights
    gradients = tape.gradient(loss, trainable_weights)
    del tape
    gm.optimizer.apply_gradients(zip(gradients, trainable_weights))
    return gm.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
