"""GradMix as a transformation: sample what is random for a batch, then apply it.

The split Keras' own ``CutMix``/``MixUp`` layers make
(``get_random_transformation`` then ``transform_images``/``transform_labels``)
and timm's ``Mixup`` makes (``_params_per_batch`` then ``_mix_batch``):
:func:`sample_transformation` draws everything random for one batch (which
images, areas, partners, noise, the policy's method) and
:func:`apply_transformation` is a pure function of the images, their
attribution maps and that draw. Both are ``keras.ops`` code that compiles with
XLA (no Beta/Gamma ops, no retracing: the epoch enters as a tensor)::

    t = sample_transformation(options, batch_size=8, image_size=(28, 28), seed=0)
    masked = apply_transformation(images, maps, t, options)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
from keras import ops

from keras_gradmix import masks, mixing
from keras_gradmix.attribution import grid_axes
from keras_gradmix.config import POLICY_METHODS, GradMixConfig


# Per epoch, in History: the share of the batch's images transformed, the share
# left as they were because their map was flat, the mean share of an image replaced.
MASKING_METRICS = ("gradmix_masked", "gradmix_flat", "gradmix_area")


class Transformation(NamedTuple):
    """Everything random about one batch, drawn before it is applied.

    For the ``k`` transformed images (all ``B``, or ``ceil(masked_fraction B)``
    chosen ones, ``index``): ``area`` ``(k,)`` masked fraction asked (scaled by
    the area ramp); ``sampled`` ``(k,)`` bool, drawn for masking (schedule,
    ``probability``); ``partner`` ``(k,)`` indices into the batch (``fill="mix"``
    or a CutMix/MixUp policy), else None; ``noise`` ``(k, H, W, 1)`` (``(k, H,
    W, C)`` with ``normalization``) with ``fill="noise"``, the uniforms that
    order the permutation with ``fill="shuffle"``, else None;
    ``index`` ``(k,)`` the chosen images, or None for all; ``method`` scalar
    int32, the policy's choice (``POLICY_METHODS``) or None for GradMix only;
    ``lam`` ``(k,)`` the CutMix or MixUp weight of the image's own label,
    ``centre`` ``((k,), (k,))`` the CutMix box centres, or None;
    ``placement`` ``(k, H, W)`` uniforms that place GradMix's mask
    (``placement="random"``) or break ties among a map's minima (``"low"``),
    None at the peak.
    """

    area: object
    sampled: object
    partner: object
    noise: object
    index: object = None
    method: object = None
    lam: object = None
    centre: object = None
    placement: object = None


class MaskedBatch(NamedTuple):
    """What one step trains on besides (or instead of) the clean batch.

    All ``(k, ...)`` tensors (``k`` images, see ``index``), constants for the
    update: ``images`` (transformed), ``maps`` (k, H, W) attribution in [0, 1],
    ``mask`` (k, H, W) bool, ``own`` the weight of each image's own label,
    ``pasted`` the weight of the partner's label (else None), ``partner``
    indices into the batch or None, ``applied`` (k,) bool, whether each image
    was transformed (not when not drawn, or its map is flat or not finite),
    ``index`` the images of the batch these are (None: all, in order),
    ``flat`` (k,) bool, drawn but left as they were because the map is flat,
    ``area`` (k,) the share of each image replaced (MixUp: ``1 - lam``),
    ``auxiliary`` (k,) with ``auxiliary_positives``: the label weights of the
    auxiliary positives, whose images follow the outliers' in ``images``
    (``2k`` images then), else None.
    """

    images: object
    maps: object
    mask: object
    own: object
    pasted: object
    partner: object
    applied: object
    index: object = None
    flat: object = None
    area: object = None
    auxiliary: object = None


def schedule(options: GradMixConfig, epoch=None):
    """``(active, area_scale, share_scale)`` at ``epoch`` (a tensor or int;
    None: past every warm-up and ramp): masking on after ``warmup_epochs`` and
    before ``stop_epoch``; the ramps' linear factors in [0, 1]."""
    if epoch is None:
        return True, 1.0, 1.0
    epoch = ops.cast(epoch, "float32")
    active = ops.greater_equal(epoch, float(options.warmup_epochs))
    if options.stop_epoch is not None:
        active = active & ops.less(epoch, float(options.stop_epoch))

    def ramp(length):
        if not length:
            return 1.0
        return ops.clip((epoch - options.warmup_epochs + 1.0) / float(length), 0.0, 1.0)

    return active, ramp(options.area_ramp_epochs), ramp(options.probability_ramp_epochs)


def transformed_count(options: GradMixConfig, batch_size):
    """``k``: the batch size, or ``ceil(masked_fraction B)`` (an int when ``B`` is)."""
    if options.masked_fraction >= 1.0:
        return batch_size
    if isinstance(batch_size, int):
        return max(1, math.ceil(options.masked_fraction * batch_size - 1e-9))
    return ops.maximum(ops.cast(ops.ceil(options.masked_fraction * ops.cast(batch_size, "float32")
                                         - 1e-6), "int32"), 1)


def sample_transformation(
    options: GradMixConfig,
    batch_size,
    image_size: tuple[int, int],
    seed=None,
    epoch=None,
) -> Transformation:
    """Draws the random parts of transforming one batch.

    Args:
        options: the :class:`GradMixConfig`.
        batch_size: ``B`` (an int or a scalar tensor).
        image_size: ``(H, W)`` (the input's grid: ``(T,)``, ``(D, H, W)``).
        seed: a ``keras.random.SeedGenerator``, an int or None. An int gives
            each draw its own derived seed, so the draws are independent.
        epoch: the current epoch (a scalar tensor or int) for the schedule
            (``warmup_epochs``, ``stop_epoch``, ramps); None: past all of it.
    """
    seeds = iter(masks.split_seed(seed, 11))
    active, area_scale, share_scale = schedule(options, epoch)
    count = transformed_count(options, batch_size)
    index = None
    if options.masked_fraction < 1.0:
        index = ops.argsort(keras.random.uniform((batch_size,), seed=next(seeds)))[:count]
    shape = () if options.area_sampling == "batch" else (count,)
    area = masks.sample_mask_area(shape, options.mask_area, options.alpha, options.beta,
                                  seed=next(seeds))
    area = ops.broadcast_to(ops.cast(area, "float32") * area_scale, (count,))
    share = options.probability * share_scale
    sampled = ops.logical_and(ops.ones((count,), "bool"), active)
    if options.probability < 1.0 or options.probability_ramp_epochs:
        sampled = sampled & (keras.random.uniform((count,), seed=next(seeds)) < share)
    policy = dict(options.policy or (("gradmix", 1.0),))
    partner = noise = method = lam = centre = None
    if options.fill == "mix" or set(policy) - {"gradmix"}:
        partner = mixing.random_partner(batch_size, seed=next(seeds))
        partner = partner if index is None else ops.take(partner, index, axis=0)
    grid = tuple(int(s) for s in image_size)
    if options.fill == "shuffle" and "gradmix" in policy:  # the permutations' order
        noise = keras.random.uniform((count, *grid, 1), seed=next(seeds))
    if options.fill == "noise" and "gradmix" in policy:
        value_range = options.value_range or (0.0, 1.0)  # None: not resolved by a model
        noise = mixing.sample_noise(count, image_size, value_range, seed=next(seeds))
        if options.normalization is not None:  # raw pixels, standardised as the images are
            mean, std = (ops.convert_to_tensor(v, "float32") for v in options.normalization)
            noise = (noise - mean) / std
    if len(policy) > 1 or "gradmix" not in policy:
        bounds = ops.convert_to_tensor([sum(list(policy.values())[: i + 1]) for i in range(len(policy))])
        draw = keras.random.uniform((), seed=next(seeds))
        choice = ops.sum(ops.cast(draw >= bounds[:-1], "int32"))  # the policy's i-th method
        method = ops.take(ops.convert_to_tensor([POLICY_METHODS.index(m) for m in policy], "int32"),
                          choice)
        alpha = options.cutmix_alpha if "cutmix" in policy else options.mixup_alpha
        if "cutmix" in policy and "mixup" in policy:  # one draw per batch, the chosen one's alpha
            alpha = None
        lam = _sample_lam(options, policy, method, count, alpha, next(seeds))
        if "cutmix" in policy:
            centre = tuple(ops.cast(keras.random.uniform((count,), 0, size, seed=next(seeds)), "int32")
                           for size in grid)
    placement = None
    wanted = options.placement != "peak" or options.auxiliary_positives
    if wanted and "gradmix" in policy:  # drawn last: "peak" draws as before
        placement = keras.random.uniform((count, *grid), seed=next(seeds))
    return Transformation(area=area, sampled=sampled, partner=partner, noise=noise, index=index,
                          method=method, lam=lam, centre=centre, placement=placement)


def _sample_lam(options, policy, method, count, alpha, seed):
    if alpha is not None:
        return masks.sample_beta((count,), alpha, alpha, seed=seed)
    seed_c, seed_m = masks.split_seed(seed, 2)
    cutmix = masks.sample_beta((count,), options.cutmix_alpha, options.cutmix_alpha, seed=seed_c)
    mixup = masks.sample_beta((count,), options.mixup_alpha, options.mixup_alpha, seed=seed_m)
    return ops.where(ops.equal(method, POLICY_METHODS.index("cutmix")), cutmix, mixup)


def apply_transformation(images, maps, transformation: Transformation, options: GradMixConfig,
                         valid=None) -> MaskedBatch:
    """Transforms the chosen images: GradMix masks each where its map peaks
    (or where ``options.placement`` says) and fills the mask; CutMix pastes a random box of the partner; MixUp blends
    with the partner. Weighs the labels; takes the policy's method.

    ``images`` and ``maps`` are the whole batch (partners come from it). Pure:
    the same images, maps and ``transformation`` give the same batch. An image
    whose map is flat (no peak: nothing the model attends to) or not finite
    (an overflow) is left unmasked by GradMix.

    Token ids ``(B, T)`` (no channel axis) stay integers; ``valid`` ``(B, T)``
    bool marks their real tokens: masks cover the sampled share of those and
    never padding, whose maps are zeroed (:mod:`keras_gradmix.token_ids`).
    """
    t = transformation
    images = ops.convert_to_tensor(images)
    maps = ops.convert_to_tensor(maps)
    if len(images.shape) > len(maps.shape) and not keras.backend.is_float_dtype(images.dtype):
        images = ops.cast(images, "float32")  # pixels; token ids have no channel axis
    # A map with a non-finite value (an overflow) is not trusted: zeroed, not masked.
    finite = ops.all(ops.isfinite(maps), axis=grid_axes(maps, channels=False))
    maps = ops.where(masks.per_item(finite, maps), maps, 0.0)
    if valid is not None:
        maps = ops.where(valid, maps, 0.0)

    def chosen(x):
        return x if x is None or t.index is None else ops.take(x, t.index, axis=0)

    own = (chosen(images), chosen(maps), chosen(finite))
    partner = None if t.partner is None else (ops.take(images, t.partner, axis=0),
                                              ops.take(maps, t.partner, axis=0))
    if t.method is None:
        return _gradmix(*own, partner, t, options, chosen(valid))
    policy, batches = dict(options.policy), {}
    if "gradmix" in policy:
        batches["gradmix"] = _gradmix(*own, partner, t, options)
    if "cutmix" in policy:
        batches["cutmix"] = _cutmix(own[0], own[1], partner[0], t)
    if "mixup" in policy:
        batches["mixup"] = _mixup(own[0], own[1], partner[0], t)
    return _select(batches, t.method)


def _gradmix(images, maps, finite, partner, t, options, valid=None) -> MaskedBatch:
    where = masks.placement_scores(maps, options.placement, t.placement, valid)
    mask, masked = masks.place_masks(options.mask, where, t.area, options.border, valid)
    axes = grid_axes(maps, channels=False)
    high = low = maps
    if valid is not None:  # the extremes over the selectable tokens (maps are in [0, 1])
        high, low = ops.where(valid, maps, -1.0), ops.where(valid, maps, 2.0)
    peaked = (ops.max(high, axis=axes) > ops.min(low, axis=axes)) & finite
    sampled = ops.convert_to_tensor(t.sampled)
    applied = sampled & peaked
    mask = mask & masks.per_item(applied, mask)
    masked = ops.where(applied, masked, 0.0)
    if options.fill == "mix":
        filled = ops.where(mask[..., None], partner[0], images)
    else:
        filled = mixing.apply_fill(images, mask, options.fill, noise=t.noise)
    pasted = None
    if options.mode == "replace" and options.fill != "mix":
        own = ops.ones_like(masked)  # replace mode trains on the masked image at full weight
    elif options.label_mode == "area":
        own = 1.0 - masked
        if options.fill == "mix":
            pasted = masked
    else:
        own = 1.0 - mixing.attribution_share(maps, mask)
        if options.fill == "mix":
            pasted = mixing.attribution_share(partner[1], mask)
    if t.partner is not None and pasted is None:
        pasted = ops.zeros_like(own)  # a policy's partner term, weight 0 on GradMix batches
    auxiliary = None
    if options.auxiliary_positives:  # OpenMix+: the same mask on the least-attended place, label kept
        low = masks.placement_scores(maps, "low", t.placement, valid)
        aux_mask, aux_area = masks.place_masks(options.mask, low, t.area, options.border, valid)
        aux_mask = aux_mask & masks.per_item(applied, aux_mask)
        filled = ops.concatenate([filled, mixing.apply_fill(images, aux_mask, options.fill, noise=t.noise)])
        auxiliary = ops.where(applied, 1.0 - aux_area, 0.0)
    return _batch(filled, maps, mask, own, pasted, t, applied, sampled & ~peaked, masked, auxiliary)


def _cutmix(images, maps, partner_images, t) -> MaskedBatch:
    """A box of area ``1 - lam`` at a random centre, clipped at the border (as
    CutMix defines it), from the partner; labels weighted by the real kept and
    pasted areas."""
    sampled = ops.convert_to_tensor(t.sampled)
    mask, pasted = masks.boxes_at(t.centre, 1.0 - t.lam, images.shape[1:-1], border="clip")
    mask = mask & masks.per_item(sampled, mask)
    pasted = ops.where(sampled, pasted, 0.0)
    filled = ops.where(mask[..., None], partner_images, images)
    return _batch(filled, maps, mask, 1.0 - pasted, pasted, t, sampled,
                  ops.zeros_like(sampled), pasted)


def _mixup(images, maps, partner_images, t) -> MaskedBatch:
    """``lam x + (1 - lam) x_partner``; labels weighted ``lam`` and ``1 - lam``."""
    sampled = ops.convert_to_tensor(t.sampled)
    lam = ops.where(sampled, ops.cast(t.lam, "float32"), 1.0)
    weight = ops.cast(masks.per_item(lam, images), images.dtype)
    blended = weight * images + (1.0 - weight) * partner_images
    mask = ops.zeros(ops.shape(maps), "bool")
    return _batch(blended, maps, mask, lam, 1.0 - lam, t, sampled, ops.zeros_like(sampled), 1.0 - lam)


def _batch(images, maps, mask, own, pasted, t, applied, flat, area, auxiliary=None) -> MaskedBatch:
    constant = ops.stop_gradient
    return MaskedBatch(
        images=constant(images), maps=constant(maps), mask=mask, own=constant(own),
        pasted=None if pasted is None else constant(pasted), partner=t.partner,
        applied=applied, index=t.index, flat=flat, area=constant(area),
        auxiliary=None if auxiliary is None else constant(auxiliary),
    )


def _select(batches: dict, method) -> MaskedBatch:
    """The policy's batch, field by field (every candidate has the same shapes)."""
    names = list(batches)
    out = batches[names[0]]
    for name in names[1:]:
        pick = ops.equal(method, POLICY_METHODS.index(name))
        out = MaskedBatch(*(
            a if a is None or a is b else ops.where(pick, b, a)
            for a, b in zip(out, batches[name])))
    return out
