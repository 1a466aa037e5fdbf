"""An independent, loop-based GradMix step for plain Sequential CNNs (no BatchNorm).

Written without keras_gradmix: a manual layer loop and GradientTape for the
Grad-CAM inputs, numpy for the map, Python loops for the box, numpy for the
cross-entropy.
"""

import keras
import numpy as np
import tensorflow as tf


def gradcam_inputs(model, layer_name, x, y):
    """Activation of `layer_name` and d(true-class logit)/d(activation)."""
    with tf.GradientTape() as tape:
        h = tf.constant(x)
        for layer in model.layers:
            h = layer(h, training=True)
            if layer.name == layer_name:
                activation = h
                tape.watch(activation)
        score = tf.reduce_sum(h * tf.one_hot(y, h.shape[-1]))
    return activation.numpy(), tape.gradient(score, activation).numpy()


def reference_mask(model, layer_name, x, y, area):
    act, grad = gradcam_inputs(model, layer_name, x, y)
    cam = np.maximum(np.einsum("bhwc,bc->bhw", act, grad.mean(axis=(1, 2))), 0)
    height, width = x.shape[1:3]
    cam = tf.image.resize(cam[..., None], (height, width), method="bilinear").numpy()[..., 0]
    side_h = int(np.floor(height * np.sqrt(area) + 0.5))
    side_w = int(np.floor(width * np.sqrt(area) + 0.5))
    mask = np.zeros(cam.shape, bool)
    for i in range(len(cam)):
        if cam[i].max() == cam[i].min():
            continue  # flat map: no peak, image left unmasked
        cy, cx = np.unravel_index(np.argmax(cam[i]), (height, width))
        # Centred on the peak, moved inside the image where it would cross the border.
        top = min(max(cy - side_h // 2, 0), height - side_h)
        left = min(max(cx - side_w // 2, 0), width - side_w)
        for r in range(top, top + side_h):
            for c in range(left, left + side_w):
                mask[i, r, c] = True
    return mask


def cross_entropy(logits, y):
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y]


def expected_step(model, layer_name, x, y, area, fill_value, mode, sample_weight=None):
    """Loss of one GradMix step and the gradient of that loss (for SGD checks)."""
    mask = reference_mask(model, layer_name, x, y, area)
    x_masked = x.copy()
    x_masked[mask] = fill_value  # mask is (B, H, W); broadcasts over channels
    kept = 1.0 - mask.mean(axis=(1, 2))
    kept[~mask.any(axis=(1, 2))] = 0.0  # unmasked images add no masked term
    sw = np.ones(len(y)) if sample_weight is None else sample_weight
    clean = cross_entropy(model(x, training=True), y)
    masked = cross_entropy(model(x_masked, training=True), y)
    if mode == "paired":
        loss = np.mean(sw * clean) + np.mean(sw * kept * masked)
    else:
        loss = np.mean(sw * masked)
    with tf.GradientTape() as tape:
        ce = lambda inputs: keras.losses.sparse_categorical_crossentropy(  # noqa: E731
            y, model(inputs, training=True), from_logits=True
        )
        swt = tf.constant(sw, tf.float32)
        if mode == "paired":
            total = tf.reduce_mean(swt * ce(x)) + tf.reduce_mean(
                swt * tf.constant(kept, tf.float32) * ce(x_masked)
            )
        else:
            total = tf.reduce_mean(swt * ce(x_masked))
    grads = tape.gradient(total, model.trainable_weights)
    return loss, [g.numpy() for g in grads], mask
