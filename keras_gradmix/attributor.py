"""The attribution as its own part: a model, the layer(s), the method, the
target and the normalisation; maps at the input's resolution.

What pytorch-grad-cam's ``BaseCAM`` is to a trainer: :class:`GradMixModel`
holds one for its step, and :func:`~keras_gradmix.attribution_maps`,
:func:`~keras_gradmix.faithfulness` and ``GradMixModel.preview`` use one
without any training wrapper::

    attributor = Attributor(model, "conv2", "layercam")
    maps = attributor(x, y)               # (B, H, W) in [0, 1], inference mode

A forward under :meth:`Attributor.tap` records the attributed layers'
outputs; the backend (:mod:`keras_gradmix.steps`) differentiates
:meth:`Attributor.score` with respect to them; :meth:`Attributor.maps` turns
activations and gradients into maps (:mod:`keras_gradmix.attribution`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import ops

from keras_gradmix.config import (
    GradMixConfig,
    check_choice,
    check_grid,
    check_optional_count,
    check_output,
    check_target,
)
from keras_gradmix.attribution import METHODS, NORMALIZATIONS, maps_from_gradients, target_scores
from keras_gradmix.inputs import check_image_batch, image_converter, input_grid
from keras_gradmix.objectives import attributed_output, labels_as_onehot
from keras_gradmix.steps import backend_step
from keras_gradmix.tap import (
    LayerTap,
    candidate_layers,
    checked_layer,
    pick_layer,
    resolve_layer,
    tapped_outputs,
)
from keras_gradmix.tokens import as_feature_map


class Attributor:
    """Attribution maps of ``model`` at ``layer``, in [0, 1], at the input's
    resolution.

    Args:
        model: a Keras classifier with one input over a grid: images
            ``(B, H, W, C)``, sequences ``(B, T, C)``, volumes ``(B, D, H, W,
            C)`` or token ids ``(B, T)`` (a dict with ``"token_ids"`` too).
        layer: a layer name or "/"-separated path, a list of them (the maps
            are normalised, upsampled and summed), or None: the last genuine
            spatial map, resolved at the first forward.
        method: ``"layercam"``, ``"gradcam"`` or ``"gradcam++"``.
        target: ``"label"`` (the output at the true class), ``"prediction"``
            (at the arg-max), ``"loss"`` (a trainer's loss, which it passes to
            :meth:`score`) or a function ``(y_true, y_pred) -> (B,)`` scores.
        output: for a model with several outputs, the attributed one (an
            index or a name).
        normalize: ``"image"`` (each map to [0, 1]) or ``"batch"``.
        prefix_tokens, token_grid: for a layer with a token output
            ``(B, tokens, C)`` whose grid is not inferred.
    """

    def __init__(
        self,
        model: keras.Model,
        layer: str | Sequence[str] | None = None,
        method: str = "layercam",
        *,
        target: str | Callable = "label",
        output: int | str | None = None,
        normalize: str = "image",
        prefix_tokens: int | None = None,
        token_grid: tuple[int, int] | None = None,
    ):
        self.model = model
        self.layer = checked_layer(model, layer)
        self.method = check_choice("attribution", method, tuple(METHODS))
        self.target = check_target(target)
        self.output = check_output(output)
        self.normalize = check_choice("normalize", normalize, NORMALIZATIONS)
        self.prefix_tokens = check_optional_count("prefix_tokens", prefix_tokens)
        self.token_grid = check_grid(token_grid)

    @classmethod
    def from_options(cls, model: keras.Model, layer, options: GradMixConfig) -> "Attributor":
        """The attributor a :class:`~keras_gradmix.GradMixConfig` describes."""
        return cls(model, layer, options.attribution, target=options.target, output=options.output,
                   normalize=options.normalize, prefix_tokens=options.prefix_tokens,
                   token_grid=options.token_grid)

    @property
    def layer_paths(self) -> list[str] | None:
        """The attributed layer paths, or None while ``layer=None`` is unresolved."""
        if self.layer is None:
            return None
        return list(self.layer) if isinstance(self.layer, list) else [self.layer]

    # ------------------------------------------------------------- forward
    def ready(self, x) -> None:
        """Checks the input batch and builds an unbuilt model outside any tap
        (Keras builds by tracing ``call``, which would count as calls)."""
        check_image_batch(x)
        if not self.model.built:
            self.model(keras.tree.map_structure(
                lambda a: keras.KerasTensor((None, *a.shape[1:]), dtype=a.dtype), x))

    def forward(self, x, training: bool = False):
        """The model's outputs, after a KerasHub task's image converter (as
        its own ``fit`` and ``predict`` apply it)."""
        converter = image_converter(self.model)
        return self.model(x if converter is None else converter(x), training=training)

    def tap(self, on_output=None, paths=None) -> LayerTap:
        """A :class:`LayerTap` on ``paths``, by default the attributed layers
        (while ``layer=None`` is unresolved, every candidate layer)."""
        paths = paths or self.layer_paths
        if paths is None:
            return LayerTap(candidate_layers(self.model), on_output)
        return LayerTap({p: resolve_layer(self.model, p) for p in paths}, on_output)

    def tapped_activations(self, tap: LayerTap, size, paths=None) -> list:
        """The outputs of ``paths`` (by default the attributed layers) from one
        forward, checked; while ``layer=None`` is unresolved, the first one
        resolves it to the last spatial map."""
        if paths is None and self.layer is None:
            self.layer = pick_layer(tap, size, self.model.name, self)
        return tapped_outputs(tap, paths or self.layer_paths, self.model.name, size, self)

    def check_reaches_output(self, reaches: Sequence[bool], paths=None) -> None:
        """Raises for an attributed layer whose output does not reach the model's."""
        for path, reached in zip(paths or self.layer_paths or [], reaches):
            if not reached:
                raise ValueError(
                    f"The output of {self.model.name!r} does not depend on layer "
                    f"{path!r}; attribute a layer on the path to the output."
                )

    # --------------------------------------------------------------- score
    def score(self, y, y_pred, loss=None):
        """The scalar whose gradient with respect to the attributed layers
        gives the maps: the summed per-sample target scores (``loss`` itself
        for ``target="loss"``)."""
        if isinstance(self.target, str) and self.target == "loss":
            if loss is None:
                raise ValueError("target='loss' attributes a loss; the caller computes it.")
            return loss
        y, y_pred = attributed_output(self.model, self.output, y, y_pred)
        if callable(self.target):
            return ops.sum(ops.cast(self.target(y, y_pred), "float32"))
        if self.target == "prediction":  # no labels needed
            return ops.sum(target_scores(None, y_pred, "prediction"))
        return ops.sum(target_scores(labels_as_onehot(self.model, y, y_pred), y_pred, self.target))

    # ---------------------------------------------------------------- maps
    def feature_maps(self, tensors, size) -> list:
        """4-D maps as they are, transformer tokens on their patch grid."""
        return [as_feature_map(t, size, self.prefix_tokens, self.token_grid) for t in tensors]

    def maps(self, activations, gradients, size):
        """The batch's maps at ``size``, each in [0, 1]: ``(B, H, W)``.
        ``activations``/``gradients``: one tensor or a list per layer."""
        if not isinstance(activations, (list, tuple)):
            activations, gradients = [activations], [gradients]
        return maps_from_gradients(self.feature_maps(activations, size),
                                   self.feature_maps(gradients, size), size, self.method,
                                   self.normalize)

    def attribute(self, x, y, paths=None, score=None) -> tuple[list, list]:
        """Activations and score gradients of ``paths`` (by default the
        attributed layers) from one inference-mode forward of ``x``.
        ``score(x, y, y_pred)``: the scalar to differentiate, if not
        :meth:`score` (a trainer's: its loss, its loss scale)."""
        return backend_step().attribute(self, x, y, paths, score)

    def __call__(self, x, y=None):
        """The maps of ``x`` (inference mode): ``(B, H, W)`` in [0, 1] (over
        the input's grid: ``(B, T)`` for sequences and token ids); ``y``
        (class indices or one-hot) unless ``target="prediction"``."""
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        activations, gradients = self.attribute(x, y)
        return self.maps(activations, gradients, input_grid(x))
