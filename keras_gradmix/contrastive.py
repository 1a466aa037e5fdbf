"""Contrastive losses of the paper's recipe: SupCon, SimCLR (NT-Xent) and the
masked-positive form that carries the GradMix term.

Pure ``keras.ops`` functions on L2-normalised features of shape
``(batch, views, dim)``, as the authors' ``SupConLoss`` (Khosla et al. 2020)
with ``contrast_mode="all"``: every one of the ``views * batch`` features is an
anchor; its positives are the other features of the same image (SimCLR,
``labels=None``) or of the same class (SupCon); the denominator runs over every
other feature, self excluded. The loss is scaled by
``temperature / base_temperature`` and averaged over anchors.

Example:

```python
import numpy as np
from keras_gradmix.contrastive import supcon_loss, l2_normalize
z = l2_normalize(np.random.default_rng(0).normal(size=(8, 2, 16)).astype("float32"))
y = np.array([0, 1, 0, 1, 2, 2, 0, 1])
supcon = supcon_loss(z, y, temperature=0.1)       # supervised
simclr = supcon_loss(z, temperature=0.1)          # NT-Xent: positives = the other view
```
"""

from __future__ import annotations

from keras import ops


def l2_normalize(features, axis: int = -1, epsilon: float = 1e-12):
    """Features divided by their L2 norm along ``axis``."""
    features = ops.convert_to_tensor(features)
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(features), axis=axis, keepdims=True), epsilon))
    return features / norm


def _flatten_views(features):
    """``(B, V, D)`` -> ``(V * B, D)``, view-major (all view-0 features first)."""
    features = ops.convert_to_tensor(features)
    if len(features.shape) != 3:
        raise ValueError(
            f"Contrastive losses take features of shape (batch, views, dim); got "
            f"shape {tuple(features.shape)}. Stack the views on axis 1."
        )
    return ops.concatenate([features[:, v] for v in range(features.shape[1])], axis=0)


def supcon_loss(
    features,
    labels=None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    positive_features=None,
):
    """Supervised contrastive loss; SimCLR's NT-Xent when ``labels`` is None.

    Args:
        features: ``(B, V, D)`` L2-normalised features of ``V`` views.
        labels: ``(B,)`` class indices, or None for the unsupervised loss
            (each image is its own class).
        temperature, base_temperature: the loss is
            ``-(temperature / base_temperature)`` times the mean log-probability
            of the positives.
        positive_features: ``(B, V, D)`` features of the mixed batch (the
            GradMix term). The positive logits of anchor ``a`` then come from
            ``a . positive_features / T``, while the denominator stays
            ``sum_{k != a} exp(a . features_k / T)`` over the clean features,
            as in the authors' code. Their two detached max shifts change the
            logged value, not the gradient; this uses an exact log-sum-exp.

    Returns:
        A scalar: the mean over all ``V * B`` anchors.
    """
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(
            f"temperature and base_temperature must be > 0, got {temperature!r} "
            f"and {base_temperature!r}."
        )
    anchors = ops.cast(_flatten_views(features), "float32")
    batch, views = features.shape[0], features.shape[1]
    n = batch * views
    if labels is None:
        same = ops.eye(batch)
    else:
        labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
        same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
    not_self = 1.0 - ops.eye(n)
    positives = ops.tile(same, (views, views)) * not_self
    logits = ops.matmul(anchors, ops.transpose(anchors)) / temperature
    # Denominator: every other clean feature (self excluded).
    log_denominator = ops.logsumexp(ops.where(not_self > 0, logits, -1e9), axis=1, keepdims=True)
    if positive_features is not None:
        mixed = ops.cast(_flatten_views(positive_features), "float32")
        logits = ops.matmul(anchors, ops.transpose(mixed)) / temperature
    log_prob = logits - log_denominator
    mean_log_prob = ops.sum(positives * log_prob, axis=1) / ops.sum(positives, axis=1)
    return -(temperature / base_temperature) * ops.mean(mean_log_prob)
