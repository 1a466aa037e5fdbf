"""Full-spectrum open-set evaluation (OpenOOD v1.5's FSOOD): a known-class
image that is corrupted is still known.

The standard protocol asks whether a score separates the clean known test
images from the unknown classes; a deployed model also meets known classes
under covariate shift (noise, blur, JPEG, ...), which it should accept. Here
the known set is the clean known test images *plus* their corrupted copies
(:mod:`keras_gradmix.corruptions`), the unknown set is unchanged, and every
metric of :func:`~keras_gradmix.osr.evaluate_open_set` is reported for both
protocols side by side.

References:
    - Zhang et al. "OpenOOD v1.5: Enhanced Benchmark for Out-of-Distribution
      Detection". 2023 (full-spectrum OOD detection).
    - Yang et al. "Full-Spectrum Out-of-Distribution Detection". IJCV 2023.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from keras_gradmix.corruptions import check_corruption, corrupt
from keras_gradmix.osr.evaluation import open_set_scores
from keras_gradmix.osr.features import class_labels, iter_batches
from keras_gradmix.osr.metrics import evaluate_open_set


def shifted_copies(known_data, corruptions: Sequence[str], severities: Sequence[int],
                   seed: int = 0, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The known images under every corruption and severity, concatenated,
    with their labels: batch ``i`` of the ``j``-th (corruption, severity) pair
    uses the seed pair ``(1000 * seed + j, i)``."""
    batches = list(iter_batches(known_data, batch_size))
    if not batches or any(y is None for _, y in batches):
        raise ValueError("Full-spectrum evaluation needs labelled known data: (x, y).")
    images, labels = [], []
    for j, (name, severity) in enumerate((n, s) for n in corruptions for s in severities):
        check_corruption(name, severity)
        for i, (x, y) in enumerate(batches):
            images.append(corrupt(np.asarray(x, np.float32), name, severity, (1000 * seed + j, i)).numpy())
            labels.append(class_labels(y))
    return np.concatenate(images), np.concatenate(labels)


def evaluate_full_spectrum(
    model, known_data, unknown_data, scores=("msp", "mls"), *,
    corruptions: Sequence[str] = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg_compression"),
    severities: Sequence[int] = (3,), seed: int = 0, batch_size: int = 256, **kwargs,
) -> dict:
    """``{score: {"standard": metrics, "full_spectrum": metrics}}``.

    ``standard``: clean known test images against the unknown ones;
    ``full_spectrum``: clean *and* corrupted known images (every corruption
    at every severity; the known set grows by that factor) against the same
    unknown ones; each with AUROC, AUPR-In/Out, FPR95, accuracy and OSCR (the
    accuracy of the full-spectrum row counts the corrupted images too). The
    model runs once over each image. Keyword arguments as in
    :func:`~keras_gradmix.osr.open_set_scores` (``feature_layer``,
    ``train_data``, ``score_options``, ...); images in [0, 1].
    """
    corruptions = (corruptions,) if isinstance(corruptions, str) else tuple(corruptions)
    severities = (severities,) if isinstance(severities, int) else tuple(severities)
    if not corruptions or not severities:
        raise ValueError("Pass at least one corruption and one severity.")
    clean = list(iter_batches(known_data, batch_size))
    if not clean or any(y is None for _, y in clean):
        raise ValueError("Full-spectrum evaluation needs labelled known data: (x, y).")
    clean_x = np.concatenate([np.asarray(x, np.float32) for x, _ in clean])
    clean_y = np.concatenate([class_labels(y) for _, y in clean])
    shifted_x, shifted_y = shifted_copies((clean_x, clean_y), corruptions, severities, seed, batch_size)
    raw = open_set_scores(model, (np.concatenate([clean_x, shifted_x]), np.r_[clean_y, shifted_y]),
                          unknown_data, scores, batch_size=batch_size, **kwargs)
    n = len(clean_x)
    out = {}
    for name in raw["known"]:
        known, unknown = raw["known"][name], raw["unknown"][name]
        out[name] = {
            "standard": evaluate_open_set(known[:n], unknown, raw["known_pred"][:n], raw["known_true"][:n]),
            "full_spectrum": evaluate_open_set(known, unknown, raw["known_pred"], raw["known_true"]),
        }
    return out
