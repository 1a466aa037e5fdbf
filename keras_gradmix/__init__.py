"""GradMix for Keras 3: attribution-based masking augmentation (Xu, Kao, Keuper 2025).

Main entry point: :class:`GradMixModel`, configured by a :class:`GradMixConfig`
and holding an objective (:mod:`keras_gradmix.objectives`). The building blocks
(attribution maps, masks, fills, the sampled transformation) are pure functions
usable in custom training loops; :func:`attribution_maps` gives any
classifier's maps in one call, for inspection, and :func:`faithfulness`
whether they point at what the model uses.

The package logs through the ``"keras_gradmix"`` logger and attaches no
handler (e.g. which layer ``layer=None`` picked, at INFO); to see it::

    import logging
    logging.basicConfig()
    logging.getLogger("keras_gradmix").setLevel(logging.INFO)

References:
    - Xu, Kao, Keuper. "Informed Mixing -- Improving Open Set Recognition via
      Attribution-based Augmentation". arXiv 2505.12803, 2025.
      https://arxiv.org/abs/2505.12803
    - The authors' code: https://github.com/gawainxu/GradMix (GradMix is its
      ``layersaliencymix``; where this package differs, see the documentation's
      "How it works").
"""

import logging as _logging

from keras_gradmix.attribution import (
    gradcam,
    gradcam_plus_plus,
    layercam,
    maps_from_gradients,
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
from keras_gradmix.config import GradMixConfig
from keras_gradmix.attributor import Attributor
from keras_gradmix.mixing import apply_fill, attribution_share, random_partner, sample_noise
from keras_gradmix.model import GradMixModel
from keras_gradmix.explain import attribution_maps
from keras_gradmix.faithfulness import faithfulness
from keras_gradmix.weights import load_wrapped_weights
from keras_gradmix.objectives import Classification, Objective
from keras_gradmix.plotting import MaskPreview, plot_masks
from keras_gradmix.tap import LayerTap, iter_layers, resolve_layer
from keras_gradmix.transform import (
    MaskedBatch,
    Transformation,
    apply_transformation,
    sample_transformation,
)

__version__ = "0.2.0.dev0"

_logging.getLogger("keras_gradmix").addHandler(_logging.NullHandler())

__all__ = [
    "Attributor",
    "Classification",
    "GradMixConfig",
    "GradMixModel",
    "LayerTap",
    "MaskPreview",
    "MaskedBatch",
    "Objective",
    "Transformation",
    "apply_fill",
    "apply_transformation",
    "attribution_maps",
    "attribution_share",
    "box_masks",
    "faithfulness",
    "gradcam",
    "gradcam_plus_plus",
    "iter_layers",
    "layercam",
    "load_wrapped_weights",
    "maps_from_gradients",
    "normalize_maps",
    "peak_positions",
    "plot_masks",
    "random_partner",
    "resize_maps",
    "resolve_layer",
    "sample_beta",
    "sample_mask_area",
    "sample_noise",
    "sample_transformation",
    "target_scores",
    "threshold_masks",
]
