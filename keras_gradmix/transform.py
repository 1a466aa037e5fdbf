"""GradMix as a transformation: sample what is random for a batch, then apply it.

The split Keras' own ``CutMix``/``MixUp`` layers make
(``get_random_transformation`` then ``transform_images``/``transform_labels``)
and timm's ``Mixup`` makes (``_params_per_batch`` then ``_mix_batch``):
:func:`sample_transformation` draws everything random for one batch (areas,
which samples, partners, noise) and :func:`apply_transformation` is a pure
function of the images, their attribution maps and that draw. Both are
``keras.ops`` code that compiles with XLA::

    t = sample_transformation(options, batch_size=8, image_size=(28, 28), seed=0)
    masked = apply_transformation(images, maps, t, options)
"""

from __future__ import annotations

from typing import NamedTuple

import keras
from keras import ops

from keras_gradmix import masks, mixing
from keras_gradmix.config import GradMixConfig


class Transformation(NamedTuple):
    """Everything random about masking one batch, drawn before it is applied.

    ``area``: ``(B,)`` float32 masked fraction asked for each image (one value
    repeated with ``area_sampling="batch"``); ``sampled``: ``(B,)`` bool, drawn
    for masking (``probability``, ``warmup_epochs``); ``partner``: ``(B,)``
    partner indices with ``fill="mix"``, else None; ``noise``: ``(B, H, W, 1)``
    fill noise with ``fill="noise"`` (``(B, H, W, C)`` when ``normalization``
    standardises each channel), else None.
    """

    area: object
    sampled: object
    partner: object
    noise: object


class MaskedBatch(NamedTuple):
    """What one step trains on besides (or instead of) the clean batch.

    All (B, ...) tensors, constants for the update: ``images`` (masked and
    filled), ``maps`` (B, H, W) attribution in [0, 1], ``mask`` (B, H, W) bool,
    ``own`` the weight of each image's own label, ``pasted`` the weight of the
    partner's label (``fill="mix"``, else None), ``partner`` indices or None,
    ``applied`` (B,) bool, whether each sample was masked: not when it was not
    drawn (``probability``, ``warmup_epochs``) or its map is flat (no peak).
    """

    images: object
    maps: object
    mask: object
    own: object
    pasted: object
    partner: object
    applied: object


def sample_transformation(
    options: GradMixConfig,
    batch_size,
    image_size: tuple[int, int],
    seed=None,
    epoch=None,
) -> Transformation:
    """Draws the random parts of masking one batch.

    Args:
        options: the :class:`GradMixConfig`.
        batch_size: ``B`` (an int or a scalar tensor).
        image_size: ``(H, W)``.
        seed: a ``keras.random.SeedGenerator``, an int or None. An int gives
            each draw its own derived seed, so the draws are independent.
        epoch: the current epoch (a scalar tensor or int) for
            ``warmup_epochs``; None means past the warm-up.
    """
    area_seed, sample_seed, partner_seed, noise_seed = masks.split_seed(seed, 4)
    shape = () if options.area_sampling == "batch" else (batch_size,)
    area = masks.sample_mask_area(
        shape, options.mask_area, options.alpha, options.beta, seed=area_seed
    )
    area = ops.broadcast_to(ops.cast(area, "float32"), (batch_size,))
    sampled = ops.ones((batch_size,), "bool")
    if options.probability < 1.0:
        sampled = keras.random.uniform((batch_size,), seed=sample_seed) < options.probability
    if options.warmup_epochs > 0 and epoch is not None:
        sampled = sampled & ops.greater_equal(epoch, options.warmup_epochs)
    partner = noise = None
    if options.fill == "mix":
        partner = mixing.random_partner(batch_size, seed=partner_seed)
    elif options.fill == "noise":
        value_range = options.value_range or (0.0, 1.0)  # None: not resolved by a model
        noise = mixing.sample_noise(batch_size, image_size, value_range, seed=noise_seed)
        if options.normalization is not None:  # raw pixels, standardised as the images are
            mean, std = (ops.convert_to_tensor(v, "float32") for v in options.normalization)
            noise = (noise - mean) / std
    return Transformation(area=area, sampled=sampled, partner=partner, noise=noise)


def apply_transformation(images, maps, transformation: Transformation, options: GradMixConfig) -> MaskedBatch:
    """Masks each image where its map peaks and fills the mask; weighs labels.

    Pure: the same images, maps and ``transformation`` give the same batch.
    An image whose map is flat (no peak: nothing the model attends to) or not
    finite (an overflow) is left unmasked.
    """
    t = transformation
    images = ops.convert_to_tensor(images)
    mask, masked = masks.MASKS[options.mask](maps, t.area)
    maps = ops.convert_to_tensor(maps)
    # A map with a non-finite value (an overflow) is not trusted: zeroed, unmasked.
    finite = ops.all(ops.isfinite(maps), axis=(1, 2))
    maps = ops.where(finite[:, None, None], maps, 0.0)
    peaked = ops.max(maps, axis=(1, 2)) > ops.min(maps, axis=(1, 2))
    applied = ops.logical_and(ops.convert_to_tensor(t.sampled), peaked & finite)
    mask = mask & applied[:, None, None]
    masked = ops.where(applied, masked, 0.0)
    filled = mixing.apply_fill(images, mask, options.fill, partner=t.partner, noise=t.noise)
    pasted = None
    if options.label_mode == "area":
        own = 1.0 - masked
        if t.partner is not None:
            pasted = masked
    else:
        own = 1.0 - mixing.attribution_share(maps, mask)
        if t.partner is not None:
            pasted = mixing.attribution_share(ops.take(maps, t.partner, axis=0), mask)
    constant = ops.stop_gradient
    return MaskedBatch(
        images=constant(filled),
        maps=constant(maps),
        mask=mask,
        own=constant(own),
        pasted=None if pasted is None else constant(pasted),
        partner=t.partner,
        applied=applied,
    )
