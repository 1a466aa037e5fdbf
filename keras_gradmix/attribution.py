"""Attribution maps from a layer's activations and the gradient of a score.

Pure functions on tensors (``keras.ops``), usable without :class:`GradMixModel`,
e.g. in a custom training loop::

    acts, grads = ...                      # (B, h, w, C) each, channels last
    maps = layercam(acts, grads)           # (B, h, w)
    maps = resize_maps(maps, (28, 28))     # (B, 28, 28)
    maps = normalize_maps(maps)            # each map in [0, 1]

Any grid works the same: a sequence's ``(B, t, C)`` activations give ``(B, t)``
maps over time, a volume's ``(B, d, h, w, C)`` give ``(B, d, h, w)``; the grid
is every axis between the batch and the channels.

All maths runs in float32 whatever the model's dtype policy.
"""

from __future__ import annotations

from keras import ops

TARGETS = ("label", "prediction", "loss")
NORMALIZATIONS = ("image", "batch")


def grid_axes(tensor, channels: bool = True) -> tuple[int, ...]:
    """The grid axes of ``(B, *grid, C)`` (``channels``) or ``(B, *grid)``."""
    return tuple(range(1, len(tensor.shape) - (1 if channels else 0)))


def gradcam(activations, gradients):
    """Grad-CAM (Selvaraju et al. 2017) of channels-last activations.

    Channel weights are the mean of the gradient over the grid; the map is the
    ReLU of the weighted sum of the activation channels.

    Args:
        activations: ``(B, h, w, C)`` output of the attributed layer (or any
            grid: ``(B, t, C)``, ``(B, d, h, w, C)``).
        gradients: the gradient of the score with respect to it, same shape.

    Returns:
        ``(B, h, w)`` (the grid) float32 maps, not normalised.
    """
    activations = ops.cast(activations, "float32")
    gradients = ops.cast(gradients, "float32")
    weights = ops.mean(gradients, axis=grid_axes(gradients), keepdims=True)  # (B, 1, 1, C)
    return ops.relu(ops.sum(weights * activations, axis=-1))


def layercam(activations, gradients):
    """LayerCAM (Jiang et al. 2021) in the GradMix reference code's form.

    ``sum_c A * ReLU(dS/dA)``: element-wise weights, no final ReLU (stage
    outputs after a ReLU are non-negative anyway). Returns ``(B, h, w)`` float32.
    """
    activations = ops.cast(activations, "float32")
    gradients = ops.cast(gradients, "float32")
    return ops.sum(activations * ops.relu(gradients), axis=-1)


def gradcam_plus_plus(activations, gradients, epsilon: float = 1e-7):
    """Grad-CAM++ (Chattopadhay et al. 2018) with the exponential-score closed form.

    ``a = g^2 / (2 g^2 + sum_ij(A) g^3)`` (0 where g = 0), channel weights
    ``sum_ij a * ReLU(g)``, map ``ReLU(sum_c w_c A)``. Returns ``(B, h, w)``
    (the grid) float32.
    """
    activations = ops.cast(activations, "float32")
    gradients = ops.cast(gradients, "float32")
    axes = grid_axes(gradients)
    g2 = gradients * gradients
    a_sum = ops.sum(activations, axis=axes, keepdims=True)
    alpha = g2 / (2.0 * g2 + a_sum * g2 * gradients + epsilon)
    alpha = ops.where(gradients != 0, alpha, 0.0)
    weights = ops.sum(alpha * ops.relu(gradients), axis=axes, keepdims=True)
    return ops.relu(ops.sum(weights * activations, axis=-1))


METHODS = {"gradcam": gradcam, "layercam": layercam, "gradcam++": gradcam_plus_plus}


def resize_maps(maps, size: tuple[int, ...]):
    """Linear resize (half-pixel centres) of ``(B, h, w)`` maps to ``size =
    (H, W)``: bilinear; of ``(B, t)`` maps to ``(T,)``, of ``(B, d, h, w)`` to
    ``(D, H, W)``: the same, one axis at a time (linear interpolation is
    separable)."""
    maps = ops.cast(maps, "float32")
    size = tuple(int(s) for s in size)
    if len(size) != len(maps.shape) - 1:
        raise ValueError(f"Maps of shape {tuple(maps.shape)} have a {len(maps.shape) - 1}-D grid; "
                         f"they cannot be resized to {size}.")
    if tuple(maps.shape[1:]) == size:
        return maps
    if len(size) == 1:  # (B, t) as (B, t, 1) images, resized along t only
        return _bilinear(maps[:, :, None], (size[0], 1))[:, :, 0]
    if len(size) == 2:
        return _bilinear(maps, size)
    if len(size) == 3:  # (h, w) of every slice, then depth (as (d, h*w) images)
        depth, height, width = maps.shape[1:]
        planes = _bilinear(ops.reshape(maps, (-1, height, width)), size[1:])
        planes = ops.reshape(planes, (-1, depth, size[1] * size[2]))
        return ops.reshape(_bilinear(planes, (size[0], size[1] * size[2])), (-1, *size))
    raise ValueError(f"Maps over a grid of 1, 2 or 3 axes can be resized; got size {size}.")


def _bilinear(maps, size):
    resized = ops.image.resize(maps[..., None], size, interpolation="bilinear",
                               data_format="channels_last")
    return resized[..., 0]


def normalize_maps(maps, mode: str = "image", epsilon: float = 1e-8):
    """Min-max normalise ``(B, H, W)`` maps (or any grid) to [0, 1].

    ``mode="image"`` uses each map's own minimum and maximum (standard Grad-CAM);
    ``mode="batch"`` one minimum and maximum over the whole batch, as the GradMix
    reference code does. A constant map becomes all zeros. Non-finite values
    (an overflow) are left out of the minimum and maximum and stay non-finite.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}.")
    maps = ops.cast(maps, "float32")
    axis = grid_axes(maps, channels=False) if mode == "image" else None
    finite = ops.isfinite(maps)  # a non-finite value stays so, without spreading
    low = ops.min(ops.where(finite, maps, float("inf")), axis=axis, keepdims=True)
    high = ops.max(ops.where(finite, maps, float("-inf")), axis=axis, keepdims=True)
    return ops.where(finite, (maps - low) / (high - low + epsilon), maps)


def maps_from_gradients(
    activations,
    gradients,
    image_size: tuple[int, ...],
    method: str = "layercam",
    normalize: str = "image",
):
    """Attribution maps at the image resolution, in [0, 1]: ``(B, H, W)``
    (or the input's grid: ``(B, T)``, ``(B, D, H, W)``).

    ``activations`` and ``gradients`` are one ``(B, h, w, C)`` tensor each
    (``(B, t, C)``, ``(B, d, h, w, C)``), or lists with one per layer. Each layer's map is normalised, upsampled to
    ``image_size`` and the maps are summed (the reference code's multi-layer
    map), then normalised again.
    """
    if method not in METHODS:
        raise ValueError(f"attribution must be one of {tuple(METHODS)}, got {method!r}.")
    if not isinstance(activations, (list, tuple)):
        activations, gradients = [activations], [gradients]
    cams = [METHODS[method](a, g) for a, g in zip(activations, gradients)]
    if len(cams) == 1:  # resizing is affine-invariant: one normalisation suffices
        return normalize_maps(resize_maps(cams[0], image_size), normalize)
    total = 0.0
    for cam in cams:
        total = total + resize_maps(normalize_maps(cam, normalize), image_size)
    return normalize_maps(total, normalize)


def target_scores(y_true, y_pred, target: str = "label"):
    """Per-sample score whose gradient is attributed, for a classifier.

    Args:
        y_true: one-hot (or soft, or multi-hot) labels ``(B, K)``, float; for
            a single-logit binary classifier ``(B, 1)`` labels in {0, 1}.
        y_pred: model outputs ``(B, K)`` (logits, or probabilities when the
            model ends with a softmax; Grad-CAM proper uses logits).
        target: ``"label"``: output at the ground-truth class (the sum over
            the positive labels of multi-hot labels; a single logit signed +1
            for label 1 and -1 for label 0, so the evidence for the true class
            is attributed); ``"prediction"``: output at the predicted (arg-max)
            class (a single logit signed by its own sign). (``"loss"`` is
            handled by the caller, which owns the loss.)

    Returns:
        ``(B,)`` float32 scores.
    """
    y_pred = ops.cast(y_pred, "float32")
    binary = y_pred.shape[-1] == 1
    if target == "label":
        weights = ops.cast(y_true, "float32")
        if binary:
            weights = 2.0 * weights - 1.0
    elif target == "prediction":
        if binary:
            weights = ops.where(y_pred >= 0, 1.0, -1.0)
        else:
            weights = ops.one_hot(ops.argmax(y_pred, axis=-1), y_pred.shape[-1])
    else:
        raise ValueError(f"target must be 'label' or 'prediction' here, got {target!r}.")
    return ops.sum(ops.stop_gradient(weights) * y_pred, axis=-1)
