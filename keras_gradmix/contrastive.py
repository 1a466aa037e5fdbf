"""Contrastive losses of the paper's recipe: SupCon, SimCLR (NT-Xent) and the
masked-positive form that carries the GradMix term.

Pure ``keras.ops`` functions on L2-normalised features of shape
``(batch, views, dim)``, as the authors' ``SupConLoss`` (Khosla et al. 2020)
with ``contrast_mode="all"``: every one of the ``views * batch`` features is an
anchor; its positives are the other features of the same image (SimCLR,
``labels=None``) or of the same class (SupCon); the denominator runs over every
other feature, self excluded. The loss is scaled by
``temperature / base_temperature`` and averaged over anchors.

Examples:

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

import keras
from keras import ops

from keras_gradmix import compat

from keras_gradmix.model import GradMixModel
from keras_gradmix.objectives import Objective


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
    sample_weight=None,
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
        sample_weight: ``(B,)`` weight of each image's anchors (all its
            views); the mean still runs over all ``V * B`` anchors.

    Returns:
        A scalar: the (weighted) mean over all ``V * B`` anchors.
    """
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(
            f"temperature and base_temperature must be > 0, got {temperature!r} "
            f"and {base_temperature!r}."
        )
    anchors = ops.cast(_flatten_views(features), "float32")
    views = features.shape[1]
    n = ops.shape(anchors)[0]  # a tensor when tf.data leaves the batch size unknown
    batch = n // views
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
    if sample_weight is not None:
        weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        mean_log_prob = ops.tile(weights, (views,)) * mean_log_prob
    return -(temperature / base_temperature) * ops.mean(mean_log_prob)


def two_view_features(y_pred):
    """``(2B, D)`` outputs of ``[view 1; view 2]`` -> ``(B, 2, D)`` unit features."""
    z = l2_normalize(ops.cast(y_pred, "float32"))
    batch = ops.shape(z)[0] // 2
    return ops.stack([z[:batch], z[batch:]], axis=1)


def flatten_two_views(x):
    """``(B, 2, H, W, C)`` views -> ``(2B, H, W, C)``, view 1 first."""
    x = x if isinstance(x, dict) else ops.convert_to_tensor(x)
    if isinstance(x, dict) or len(x.shape) != 5 or x.shape[1] != 2:
        got = f"a dict of {sorted(x)}" if isinstance(x, dict) else f"shape {tuple(x.shape)}"
        raise ValueError(
            f"Contrastive training takes two views per image, shape (batch, 2, "
            f"height, width, channels); got {got}. Build them "
            f"with keras_gradmix.data.two_views."
        )
    return ops.concatenate([x[:, 0], x[:, 1]], axis=0)


def recipe_loss(y_pred, labels, *, temperature, base_temperature, supcon_weight, ssl_weight):
    """``supcon_weight * SupCon(Z, y) + ssl_weight * SimCLR(Z)`` of ``(2B, D)`` outputs."""
    z = two_view_features(y_pred)
    options = dict(temperature=temperature, base_temperature=base_temperature)
    return supcon_weight * supcon_loss(z, labels, **options) + ssl_weight * supcon_loss(z, **options)


@keras.saving.register_keras_serializable(package="keras_gradmix")
class Contrastive(Objective):
    """The paper's recipe as an objective: SupCon + SimCLR with GradMix positives.

    Each batch is ``(views, labels)`` with ``views`` of shape
    ``(B, 2, H, W, C)`` (:func:`keras_gradmix.data.two_views`); the wrapped
    encoder's output is the projection, L2-normalised here. The clean loss is
    ``supcon_weight * SupCon(Z, y) + ssl_weight * SimCLR(Z)`` plus the model's
    regularisation losses. With GradMix, the attributed score is the
    unsupervised NT-Xent of the clean views at ``attribution_temperature`` (as
    the authors' code: the gradient of a loss, not of a class score); only view
    1 is masked, and the step adds
    ``ssl_weight * SimCLR(Z, positives Z~)`` (and with ``supcon_positives``,
    ``supcon_weight * SupCon(Z, y, positives Z~)``, their ``--supcon_aug``),
    where each anchor of image ``i`` is weighted by the kept-area fraction of
    its masked view 1, and by 0 when view 1 was not masked (warm-up,
    ``probability``, a flat map).

    Args:
        temperature, base_temperature: of the SupCon and SimCLR terms.
        attribution_temperature: of the NT-Xent whose gradient is attributed.
        supcon_weight, ssl_weight: ``gamma`` and ``lambda`` of the recipe.
        supcon_positives: also weight a SupCon term with the masked positives.
    """

    def __init__(self, temperature: float = 0.05, base_temperature: float = 0.07,
                 attribution_temperature: float = 0.05, supcon_weight: float = 1.0,
                 ssl_weight: float = 1.0, supcon_positives: bool = False):
        for name, value in (("temperature", temperature), ("base_temperature", base_temperature),
                            ("attribution_temperature", attribution_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}.")
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature)
        self.attribution_temperature = float(attribution_temperature)
        self.supcon_weight = float(supcon_weight)
        self.ssl_weight = float(ssl_weight)
        self.supcon_positives = bool(supcon_positives)

    def get_config(self):
        return dict(temperature=self.temperature, base_temperature=self.base_temperature,
                    attribution_temperature=self.attribution_temperature,
                    supcon_weight=self.supcon_weight, ssl_weight=self.ssl_weight,
                    supcon_positives=self.supcon_positives)

    def check_options(self, options):
        fixed = dict(mode="paired", target="loss", label_mode="area")
        wrong = {k: getattr(options, k) for k, v in fixed.items() if getattr(options, k) != v}
        if wrong:
            raise ValueError(
                f"The contrastive recipe trains with {fixed}; got {wrong}. Leave these "
                f"options at the recipe's values."
            )
        if options.fill == "mix":
            raise ValueError(
                "The contrastive recipe fills the box with noise or a constant; fill='mix' "
                "(pasting a partner) has no labels to mix in the contrastive recipe."
            )
        if options.masked_as != "positive":
            raise ValueError(
                "The contrastive recipe uses masked views as positives of their image; "
                "masked_as='outlier' (negatives trained toward the uniform distribution "
                "over classes) needs a classifier: use GradMixModel.")
        if options.masked_fraction < 1 or options.policy is not None:
            raise ValueError(
                "The contrastive recipe masks view 1 of every image with GradMix: leave "
                "masked_fraction at 1 and policy at None.")

    def prepare_inputs(self, x):
        return flatten_two_views(x)

    def model_inputs(self, x):
        # (B, 2, H, W, C) views -> both views, view-major (2B, H, W, C).
        return flatten_two_views(x) if not isinstance(x, dict) and len(x.shape) == 5 else x

    def check_compiled(self, trainer):
        if getattr(trainer, "optimizer", None) is None:
            raise ValueError("Contrastive training needs compile(optimizer=...) (no loss).")
        if compat.has_compiled_loss(trainer):
            raise ValueError(
                "Contrastive training computes its own loss (SupCon + SimCLR); compile "
                "with an optimizer only, without loss=."
            )

    def _loss(self, features, labels=None, temperature=None, **kwargs):
        return supcon_loss(features, labels, temperature=temperature or self.temperature,
                           base_temperature=self.base_temperature, **kwargs)

    def clean_loss(self, trainer, x, y, y_pred, sample_weight=None, training=True):
        loss = recipe_loss(y_pred, y, temperature=self.temperature,
                           base_temperature=self.base_temperature,
                           supcon_weight=self.supcon_weight, ssl_weight=self.ssl_weight)
        extra = trainer.losses  # regularisers and add_loss of the forward
        if extra:
            loss = loss + ops.sum(ops.stack([ops.cast(ops.sum(v), "float32") for v in extra]))
        return loss

    def attribution_score(self, trainer, y, y_pred, clean_loss):
        return self._loss(two_view_features(y_pred), temperature=self.attribution_temperature)

    def maskable(self, batch_size):
        return ops.arange(batch_size) < batch_size // 2  # view 1

    def loss_terms(self, trainer, x, y, y_pred, clean_loss, y_masked, sample_weight, masked):
        z, z_mixed = two_view_features(y_pred), two_view_features(y_masked)
        half = ops.shape(masked.own)[0] // 2
        kept = ops.where(masked.applied, masked.own, 0.0)[:half]  # w per image, from view 1
        kept = ops.stop_gradient(kept)
        terms = {"clean": clean_loss,
                 "masked": self.ssl_weight * self._loss(z, positive_features=z_mixed, sample_weight=kept)}
        if self.supcon_positives:
            terms["masked_supcon"] = self.supcon_weight * self._loss(
                z, y, positive_features=z_mixed, sample_weight=kept)
        return terms

    def metrics(self, trainer, x, y, y_pred, sample_weight=None):
        # Labels index images, predictions are features of two views: the loss only.
        return {"loss": compat.loss_tracker(trainer).result()}


def _recipe(kwargs: dict) -> tuple[dict, dict]:
    """:class:`Contrastive` arguments, and the rest."""
    names = Contrastive().get_config()
    return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}


@keras.saving.register_keras_serializable(package="keras_gradmix")
class SupConModel(keras.Model):
    """Supervised contrastive training without GradMix (the recipe's baseline):
    the :class:`Contrastive` objective's clean loss on two views
    ``(B, 2, H, W, C)``, with Keras' own step on every backend. Keyword
    arguments are :class:`Contrastive`'s (``temperature=``...) or
    ``keras.Model``'s. Compile with an optimizer only."""

    def __init__(self, model: keras.Model, *, objective: Contrastive | None = None, **kwargs):
        recipe, keras_kwargs = _recipe(kwargs)
        super().__init__(**keras_kwargs)
        self.model = model
        self.objective = objective or Contrastive(**recipe)

    def call(self, inputs, training=None):
        return self.model(self.objective.model_inputs(inputs), training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.objective.clean_loss(self, x, y, y_pred, sample_weight, training)

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                **self.objective.get_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)


@keras.saving.register_keras_serializable(package="keras_gradmix")
class GradMixContrastive(GradMixModel):
    """The paper's recipe: supervised contrastive training with GradMix positives.

    A :class:`~keras_gradmix.GradMixModel` holding the :class:`Contrastive`
    objective. Wraps an ``encoder`` whose output is the projection (e.g.
    ResNet-18 with a 512-512-128 head). Keyword arguments are
    :class:`Contrastive`'s (``temperature=``, ``supcon_weight=``,
    ``supcon_positives=``...) or GradMix options (``mask_area=``, ``fill=``,
    ``warmup_epochs=``...; ``attribution`` defaults to ``"layercam"``, the
    reference code's form). Compile with an optimizer only (no loss).

    Examples:

    ```python
    import numpy as np, keras
    from keras_gradmix.contrastive import GradMixContrastive
    encoder = keras.Sequential([keras.Input((28, 28, 1)),
                                keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16)])
    views = np.random.rand(32, 2, 28, 28, 1).astype("float32")
    labels = np.random.randint(0, 4, 32)
    gm = GradMixContrastive(encoder, layer="conv", seed=0)
    gm.compile(optimizer="adam")
    gm.fit(views, labels, batch_size=16, epochs=1, verbose=0)
    ```
    """

    def __init__(self, model: keras.Model, layer=None, *, objective: Contrastive | None = None,
                 **kwargs):
        recipe, options = _recipe(kwargs)
        options = {"attribution": "layercam", "target": "loss", **options}
        super().__init__(model, layer, objective=objective or Contrastive(**recipe), **options)
