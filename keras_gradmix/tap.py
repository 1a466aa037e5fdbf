"""Finding a layer by path inside any Keras model, and tapping its output.

A path is a layer name, or names joined by "/" to reach into nested models and
layers ("backbone/conv5_block3_out"); Keras forbids "/" in layer names.

:class:`LayerTap` intercepts the ``call`` of chosen layers while it is active,
so it records their outputs during an ordinary forward pass of the whole model.
This works the same for functional, Sequential and subclassed models and for
layers inside nested sub-models, and needs no second, truncated model.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import warnings
from typing import Callable, Iterator

import keras

from keras_gradmix import compat
from keras_gradmix.tokens import fits_a_grid, token_grid

logger = logging.getLogger("keras_gradmix")


def iter_layers(model, prefix: str = "", descend: Callable | None = None) -> Iterator[tuple[str, keras.Layer]]:
    """Yields ``(path, layer)`` for every layer inside ``model``, depth first
    (not into the layers for which ``descend(layer)`` is False)."""
    for layer in compat.child_layers(model):
        path = prefix + layer.name
        yield path, layer
        if descend is None or descend(layer):
            yield from iter_layers(layer, path + "/", descend)


def is_attention(layer) -> bool:
    """An attention layer (its query/key/value projections are no feature maps)."""
    return isinstance(layer, keras.layers.MultiHeadAttention) or "Attention" in type(layer).__name__


def candidate_layers(model) -> dict:
    """``{path: layer}``: what ``layer=None`` may pick, every layer but the
    insides of attention layers and a KerasHub task's preprocessor."""
    preprocessor = getattr(model, "preprocessor", None)
    return {path: layer for path, layer in iter_layers(
        model, descend=lambda layer: not is_attention(layer) and layer is not preprocessor)
        if layer is not preprocessor}


def graph_output_shape(layer) -> tuple | None:
    """The layer's output shape in a functional graph, or None when it has none."""
    try:
        return tuple(layer.output.shape)
    except Exception:  # no graph (subclassed), shared layer, several outputs...
        return None


def image_layer_paths(model) -> list[str]:
    """Paths of layers whose graph output has the input's rank (4-D for
    images, 3-D for sequences, 5-D for volumes), the candidates for attribution."""
    inputs = getattr(model, "inputs", None) or []
    rank = len(inputs[0].shape) if len(inputs) == 1 and len(inputs[0].shape) in (3, 5) else 4
    return [
        path
        for path, layer in iter_layers(model)
        if len(graph_output_shape(layer) or ()) == rank
    ]


SHOWN = 10  # candidates an error lists: the last ones before the output


def candidate_text(paths: list[str], kind: str) -> str:
    """``paths`` for an error: all of them, or the last ``SHOWN`` (the ones
    near the output people usually want) and how to print the rest."""
    if len(paths) <= SHOWN:
        return f"Its {kind}: {paths}."
    return (f"The last {SHOWN} of its {len(paths)} {kind}: {paths[-SHOWN:]}. Print them all "
            f"with [path for path, _ in keras_gradmix.iter_layers(model)].")


def resolve_layer(model, path: str, kind: str = "attribution") -> keras.Layer:
    """The layer at ``path`` inside ``model``; a ValueError lists the candidates.

    ``path`` is a name or a "/"-separated path ("backbone/conv5_block3_out"); a
    bare name that is unique anywhere in the model finds its nested layer
    ("conv5_block3_out"). A KerasHub backbone's ``pyramid_outputs`` level
    ("P3") names the layer that outputs it ("backbone/P3"). ``kind``:
    "attribution" (4-D maps or tokens are wanted) or "features" (any layer).
    """
    if not isinstance(path, str) or not path:
        raise ValueError(
            f"layer must be a layer name or a '/'-separated path such as "
            f"'backbone/conv5_block3_out', or None; got {path!r}."
        )
    layer = model
    for name in path.split("/"):
        matches = [child for child in compat.child_layers(layer) if child.name == name]
        pyramid = getattr(layer, "pyramid_outputs", None)
        if not matches and isinstance(pyramid, dict) and name in pyramid:
            matches = [compat.producing_layer(pyramid[name])]  # a KerasHub level, e.g. "P4"
        if not matches and "/" not in path:  # a bare name: unique anywhere inside?
            nested = [(p, child) for p, child in iter_layers(layer) if child.name == name]
            if len(nested) > 1:
                raise ValueError(
                    f"Layer name {name!r} is ambiguous in model {model.name!r}: "
                    f"{[p for p, _ in nested]}. Pass one of these paths.")
            matches = [child for _, child in nested]
        if not matches:
            if any(op.name == name for op in compat.graph_layers_from_inputs(layer)):
                raise ValueError(
                    f"Layer {name!r} (from layer={path!r}) is called on the inputs of "
                    f"{layer.name!r}, but its output does not reach the model's output; "
                    f"attribute a layer on the path to the output."
                )
            raise ValueError(f"No layer {name!r} (from {'layer' if kind == 'attribution' else 'feature_layer'}"
                             f"={path!r}) in model {model.name!r}. " + _candidates(model, name, kind))
        layer = matches[0]
    return layer


def _candidates(model, name, kind) -> str:
    every = [p for p, _ in iter_layers(model)]
    close = difflib.get_close_matches(name, [p.rsplit("/", 1)[-1] for p in every], n=3)
    hint = f"Did you mean {close}? " if close else ""
    if kind == "attribution":
        paths = image_layer_paths(model)
        if paths:
            return (hint + candidate_text(paths, "layers with a map")
                    + " Pass one of them, or layer=None for a layer chosen for you.")
    return hint + candidate_text(every, "layers") + (
        " Features are read from a 2-D (batch, features) or 4-D output (averaged over space)."
        if kind == "features" else "")


GRID_OUTPUTS = {1: "one (batch, steps, channels) sequence output",
                2: "one 4-D (batch, height, width, channels) feature map or (batch, tokens, "
                   "channels) transformer tokens",
                3: "one 5-D (batch, depth, height, width, channels) feature map"}


def tapped_outputs(tap: "LayerTap", paths, model_name: str, image_size, options=None) -> list:
    """The output of each layer in ``paths`` from one forward, checked: one
    call, one 4-D ``(batch, height, width, channels)`` feature map or a
    ``(batch, tokens, channels)`` output whose patch grid fits the image (for
    ``(T,)`` sequences a ``(batch, steps, channels)`` output, for ``(D, H, W)``
    volumes a 5-D one)."""
    activations = []
    for path in paths:
        outputs = tap.outputs[path]
        if len(outputs) != 1:
            raise ValueError(
                f"Layer {path!r} ran {len(outputs)} times in one forward pass of "
                f"{model_name!r}; GradMix needs a layer that runs exactly once."
            )
        activation = outputs[0]
        native = len(image_size) + 2  # (batch, *grid, channels)
        rank = len(activation.shape) if keras.ops.is_tensor(activation) else None
        if rank == native and _area(activation) == 1:
            sizes = "x".join(str(s) for s in image_size)
            raise SmallMapError(
                f"Layer {path!r} gives {'x'.join('1' * len(image_size))} maps at {sizes} inputs: one "
                f"value per image, no place to mask. Attribute an earlier layer, or pass "
                f"layer=None (the last layer with larger maps), or feed larger images.", path)
        if rank == 3 and len(image_size) == 2:
            token_grid(activation.shape[1], image_size, *_token_options(options))  # or a clear error
        elif rank != native:
            shape = getattr(activation, "shape", None)
            shape = type(activation).__name__ if shape is None else tuple(shape)
            kind = {1: "a convolutional, recurrent or attention", 2: "a convolutional or transformer",
                    3: "a convolutional"}.get(len(image_size), "a")
            raise ValueError(
                f"Layer {path!r} returned {shape}; GradMix needs "
                f"{GRID_OUTPUTS.get(len(image_size), 'an output over the input grid')}. Choose "
                f"{kind} layer, or layer=None."
            )
        activations.append(activation)
    return activations


class SmallMapError(ValueError):
    """An attributed layer whose maps are 1x1 at the input size (``.path``)."""

    def __init__(self, message, path):
        super().__init__(message)
        self.path = path


def _area(output) -> int:
    """The number of places of a ``(batch, *grid, channels)`` output's grid."""
    return math.prod(output.shape[1:-1])


def is_padding(layer) -> bool:
    """A padding layer (``ZeroPadding2D``, ...): its border rows and columns
    are padding, not features, so it is never a map to attribute."""
    return "Padding" in type(layer).__name__


def _token_options(options):
    return (None, None) if options is None else (options.prefix_tokens, options.token_grid)


def spatial_candidates(tap: "LayerTap", image_size, options=None) -> list[str]:
    """The tapped paths whose output is a genuine spatial map, in call order:
    one 4-D tensor larger than 1x1 and no larger than the image, not from a
    padding layer, or tokens whose patch grid fits the image."""

    def spatial(path):
        outputs = tap.outputs[path]
        if len(outputs) != 1 or not keras.ops.is_tensor(outputs[0]) or is_padding(tap.layers[path]):
            return False
        output = outputs[0]
        if len(output.shape) == 3 and len(image_size) == 2:
            return fits_a_grid(output, image_size, *_token_options(options))
        if len(output.shape) != len(image_size) + 2 or None in output.shape[1:-1]:
            return False
        return _area(output) > 1 and all(g <= s for g, s in zip(output.shape[1:-1], image_size))

    return [path for path in tap.order if spatial(path)]


def pick_layer(tap: "LayerTap", image_size, model_name: str, options=None, flat=()) -> str:
    """What ``layer=None`` resolves to, the one rule: the last genuine spatial
    map (:func:`spatial_candidates`) in call order whose attribution maps are
    not all flat. ``flat``: the paths known flat on a batch (the first-batch
    look knows them; a custom loop's first step does not). Logged at INFO."""
    maps = spatial_candidates(tap, image_size, options)
    if not maps:
        wanted = ("a 4-D (batch, height, width, channels) output larger than 1x1 or a token "
                  "output with a patch grid" if len(image_size) == 2 else
                  f"{GRID_OUTPUTS.get(len(image_size), 'an output over the input grid')[4:]} "
                  f"with more than one place")
        raise ValueError(
            f"No layer of {model_name!r} has {wanted}; GradMix "
            f"attributes a spatial feature map. Pass layer= explicitly."
        )
    usable = [path for path in maps if path not in flat]
    if not usable:
        warnings.warn(
            f"GradMix: every candidate layer of {model_name!r} gives flat attribution maps "
            f"on the first batch; layer=None falls back to the last one, {maps[-1]!r}, where "
            f"nothing will be masked until its gradients differ.", stacklevel=5)
    choice = (usable or maps)[-1]
    logger.info("GradMix attributes the output of layer %r (layer=None).", choice)
    return choice


class LayerTap:
    """Records the output of layers each time they are called, while active.

    Args:
        layers: ``{path: layer}`` to tap.
        on_output: optional function applied to each output before it is
            recorded and passed on (e.g. ``tape.watch``, or adding a zero
            perturbation to differentiate against).

    Examples:
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


def checked_layer(model, layer):
    """``layer`` as a path or a list of paths, each found in ``model`` and, where
    the graph tells, with a 4-D map or a 3-D token output."""
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ValueError("layer must name at least one layer, got [].")
        layer = list(layer)
    for path in [] if layer is None else layer if isinstance(layer, list) else [layer]:
        shape = graph_output_shape(resolve_layer(model, path))
        if shape is not None and len(shape) not in (3, 4, 5):
            raise ValueError(
                f"Layer {path!r} has output shape {shape}; GradMix needs a 4-D "
                f"(batch, height, width, channels) feature map or (batch, tokens, "
                f"channels) transformer tokens (for sequences a (batch, steps, channels) "
                f"output, for volumes a 5-D one). " + candidate_text(image_layer_paths(model),
                                                                  "layers with a map")
            )
    return layer
