"""GradMix for Keras 3: attribution-based masking augmentation (Xu, Kao, Keuper 2025).

Main entry point: :class:`GradMixModel`. The building blocks (attribution maps,
box masks, fills) are pure functions usable in custom training loops.
"""

import logging as _logging

from keras_gradmix.attribution import (
    attribution_maps,
    gradcam,
    gradcam_plus_plus,
    layercam,
    normalize_maps,
    resize_maps,
    target_scores,
)
from keras_gradmix.masks import (
    box_masks,
    peak_positions,
    sample_beta,
    sample_mask_area,
    threshold_masks,
)
from keras_gradmix.mixing import apply_fill, attribution_share, random_partner
from keras_gradmix.model import GradMixModel, MaskedBatch
from keras_gradmix.plotting import MaskPreview, plot_masks
from keras_gradmix.tap import LayerTap, iter_layers, resolve_layer

__version__ = "0.1.0.dev0"

# Visible by default: e.g. which layer layer=None picked.
_logger = _logging.getLogger("keras_gradmix")
if not _logger.handlers:
    _handler = _logging.StreamHandler()
    _handler.setFormatter(_logging.Formatter("keras_gradmix: %(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(_logging.INFO)

__all__ = [
    "GradMixModel",
    "LayerTap",
    "MaskPreview",
    "MaskedBatch",
    "apply_fill",
    "attribution_maps",
    "attribution_share",
    "box_masks",
    "gradcam",
    "gradcam_plus_plus",
    "iter_layers",
    "layercam",
    "normalize_maps",
    "peak_positions",
    "plot_masks",
    "random_partner",
    "resize_maps",
    "resolve_layer",
    "sample_beta",
    "sample_mask_area",
    "target_scores",
    "threshold_masks",
]
