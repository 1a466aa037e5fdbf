"""Finding a layer by path inside any Keras model, and tapping its output.

A path is a layer name, or names joined by "/" to reach into nested models and
layers ("backbone/conv5_block3_out"); Keras forbids "/" in layer names.

:class:`LayerTap` intercepts the ``call`` of chosen layers while it is active,
so it records their outputs during an ordinary forward pass of the whole model.
This works the same for functional, Sequential and subclassed models and for
layers inside nested sub-models, and needs no second, truncated model.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Iterator

import keras

from keras_gradmix import compat

logger = logging.getLogger("keras_gradmix")


def iter_layers(model, prefix: str = "", models_only: bool = False) -> Iterator[tuple[str, keras.Layer]]:
    """Yields ``(path, layer)`` for every layer inside ``model``, depth first.

    ``models_only`` does not descend into layers that are not models (e.g.
    the query/key/value projections inside ``MultiHeadAttention``).
    """
    for layer in compat.child_layers(model):
        path = prefix + layer.name
        yield path, layer
        if not models_only or isinstance(layer, keras.Model):
            yield from iter_layers(layer, path + "/", models_only)


def graph_output_shape(layer) -> tuple | None:
    """The layer's output shape in a functional graph, or None when it has none."""
    try:
        return tuple(layer.output.shape)
    except Exception:  # no graph (subclassed), shared layer, several outputs...
        return None


def image_layer_paths(model) -> list[str]:
    """Paths of layers whose graph output is 4-D, the candidates for attribution."""
    return [
        path
        for path, layer in iter_layers(model)
        if len(graph_output_shape(layer) or ()) == 4
    ]


def resolve_layer(model, path: str) -> keras.Layer:
    """The layer at ``path`` inside ``model``; a ValueError lists the candidates."""
    if not isinstance(path, str) or not path:
        raise ValueError(
            f"layer must be a layer name or a '/'-separated path such as "
            f"'backbone/conv5_block3_out', or None; got {path!r}."
        )
    layer = model
    for name in path.split("/"):
        matches = [child for child in compat.child_layers(layer) if child.name == name]
        if not matches:
            if any(op.name == name for op in compat.graph_layers_from_inputs(layer)):
                raise ValueError(
                    f"Layer {name!r} (from layer={path!r}) is called on the inputs of "
                    f"{layer.name!r}, but its output does not reach the model's output; "
                    f"attribute a layer on the path to the output."
                )
            candidates = image_layer_paths(model)
            kind = "layers with a 4-D output"
            if not candidates:
                candidates = [p for p, _ in iter_layers(model)]
                kind = "layers"
            raise ValueError(
                f"No layer {name!r} (from layer={path!r}) in model {model.name!r}. "
                f"Its {kind}: {candidates}. Pass one of them, or layer=None for "
                f"the last layer with a 4-D output."
            )
        layer = matches[0]
    return layer


def tapped_outputs(tap: "LayerTap", paths, model_name: str) -> list:
    """The output of each layer in ``paths`` from one forward, checked: one
    call, one 4-D ``(batch, height, width, channels)`` tensor."""
    activations = []
    for path in paths:
        outputs = tap.outputs[path]
        if len(outputs) != 1:
            raise ValueError(
                f"Layer {path!r} ran {len(outputs)} times in one forward pass of "
                f"{model_name!r}; GradMix needs a layer that runs exactly once."
            )
        activation = outputs[0]
        if not keras.ops.is_tensor(activation) or len(activation.shape) != 4:
            shape = getattr(activation, "shape", None)
            shape = type(activation).__name__ if shape is None else tuple(shape)
            raise ValueError(
                f"Layer {path!r} returned {shape}; GradMix needs one 4-D "
                f"(batch, height, width, channels) feature map. Choose a "
                f"convolutional layer, or layer=None for the last 4-D one."
            )
        activations.append(activation)
    return activations


def pick_layer(tap: "LayerTap", image_size, model_name: str) -> str:
    """``layer=None``: the last layer (in call order) whose output is a genuine
    spatial feature map: one 4-D tensor larger than 1x1 and no larger than the
    image, from a layer of the model or of a nested model (never a sublayer of
    a plain layer such as ``MultiHeadAttention``). Logged at INFO."""

    def spatial(path):
        outputs = tap.outputs[path]
        if len(outputs) != 1 or not keras.ops.is_tensor(outputs[0]) or len(outputs[0].shape) != 4:
            return False
        height, width = outputs[0].shape[1:3]
        return height * width > 1 and height <= image_size[0] and width <= image_size[1]

    maps = [path for path in tap.order if spatial(path)]
    if not maps:
        raise ValueError(
            f"No layer of {model_name!r} has a 4-D (batch, height, width, "
            f"channels) output larger than 1x1; GradMix attributes a spatial "
            f"feature map. Pass layer= explicitly."
        )
    logger.info("GradMix attributes the output of layer %r (layer=None).", maps[-1])
    return maps[-1]


class LayerTap:
    """Records the output of layers each time they are called, while active.

    Args:
        layers: ``{path: layer}`` to tap.
        on_output: optional function applied to each output before it is
            recorded and passed on (e.g. ``tape.watch``, or adding a zero
            perturbation to differentiate against).

    Example:
        >>> tap = LayerTap({"conv": model.get_layer("conv")})
        >>> with tap:
        ...     y = model(x, training=True)
        >>> activation = tap.outputs["conv"][0]
    """

    def __init__(self, layers: dict, on_output: Callable | None = None):
        self.layers = dict(layers)
        self.on_output = on_output
        self.outputs: dict[str, list] = {path: [] for path in self.layers}
        self.order: list[str] = []  # paths in the order their calls returned
        self._saved: list = []

    def _wrap(self, path, call):
        @functools.wraps(call)
        def tapped_call(*args, **kwargs):
            output = call(*args, **kwargs)
            if self.on_output is not None and keras.ops.is_tensor(output):
                replaced = self.on_output(output)
                output = output if replaced is None else replaced
            self.outputs[path].append(output)
            self.order.append(path)
            return output

        return tapped_call

    def __enter__(self):
        for path, layer in self.layers.items():
            self._saved.append((layer, layer.__dict__.get("call")))
            # object.__setattr__: bypass Keras attribute tracking.
            object.__setattr__(layer, "call", self._wrap(path, layer.call))
        return self

    def __exit__(self, *exc):
        for layer, own_call in reversed(self._saved):
            if own_call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own_call)
        self._saved.clear()
        return False
