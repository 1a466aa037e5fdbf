"""GradMix's options: one frozen, validated, serialisable object."""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any

import keras

from keras_gradmix import attribution, masks, mixing

# The documentation site, for runtime messages: a wheel user has no docs/ folder.
DOCS = "https://keras-gradmix.github.io/keras-gradmix/"
MODES = ("paired", "replace")
POLICY_METHODS = ("gradmix", "cutmix", "mixup")
BN_STATISTICS = ("clean", "all")
AREA_SAMPLING = ("batch", "sample")
LABEL_MODES = ("area", "attribution")
MASKED_AS = ("positive", "outlier")


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value


def _fraction(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    return float(value)


def _epochs(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def _value_range(value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not low < high:
        raise ValueError(
            f"value_range must be (low, high) with low < high, the range of the "
            f"input images, got {value!r}. Example: value_range=(0, 255)."
        )
    return low, high


def check_target(value):
    if callable(value):
        return value
    if isinstance(value, dict):  # a serialised function, from a saved config
        return keras.saving.deserialize_keras_object(value)
    if isinstance(value, str) and value in attribution.TARGETS:
        return value
    raise ValueError(
        f"target must be one of {attribution.TARGETS} or a function (y_true, y_pred) -> "
        f"(batch,) scores, got {value!r}."
    )


def check_output(value):
    if value is None or isinstance(value, str) or (
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0
    ):
        return None if value is None else value if isinstance(value, str) else int(value)
    raise ValueError(
        f"output must be None, an output index >= 0 or an output name, got {value!r}."
    )


def check_optional_count(name, value):
    if value is None:
        return None
    return _epochs(name, value)


def check_grid(value):
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
        ok = h > 0 and w > 0 and all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"token_grid must be (height, width) in patches, got {value!r}.")
    return h, w


def _ids(value) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ValueError(f"unselectable_token_ids must be a list of token ids >= 0, got {value!r}.")
    return tuple(int(v) for v in value)


def _normalization(value):
    if value is None:
        return None
    try:
        mean, std = value
        mean = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean]))
        std = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std]))
        ok = len(mean) == len(std) and all(v > 0 for v in std)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"normalization must be (mean, std), per channel or one value each, with "
            f"std > 0, got {value!r}. Example: normalization=((0.485, 0.456, 0.406), "
            f"(0.229, 0.224, 0.225)) for ImageNet-standardised images."
        )
    return mean, std


def _flag(name, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return value


def _policy(value):
    if value is None:
        return None
    try:
        items = {str(k): float(v) for k, v in dict(value).items()}  # a dict or (name, p) pairs
        ok = bool(items) and all(k in POLICY_METHODS and v >= 0 for k, v in items.items())
        ok = ok and sum(items.values()) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"policy must map some of {POLICY_METHODS} to probabilities >= 0 (summing above "
            f"0), got {value!r}. Example: policy={{'gradmix': 0.5, 'cutmix': 0.5}}.")
    total = sum(items.values())
    return tuple((k, items[k] / total) for k in POLICY_METHODS if items.get(k, 0) > 0)


def _positive(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return float(value)


def _seed(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ValueError(f"seed must be an int or None, got {value!r}.")
    return None if value is None else int(value)


@dataclasses.dataclass(frozen=True)
class GradMixConfig:
    """Every option of GradMix, checked when it is made.

    ``GradMixModel(model, layer, **options)`` builds one from its keyword
    arguments (``gm.options``); it is saved with the model.

    Attributes:
        attribution: ``"layercam"`` (default since 0.2: ``sum_c A *
            ReLU(grad)``, the reference code's form; never flat where
            Grad-CAM's maps often are: the flat-maps result of the documentation),
            ``"gradcam"`` or ``"gradcam++"``.
        mode: ``"paired"`` (paper): ``loss = L(clean) + w * L(masked)``, with
            ``w`` the kept-area fraction per sample; ``"replace"``: train on
            the masked batch only.
        target: score whose gradient is attributed: ``"label"`` (output at
            the true class; the sum over the positive labels of multi-hot
            labels; for a single-logit binary classifier the logit signed by
            the true class), ``"prediction"`` (at the arg-max class),
            ``"loss"`` (the clean loss, as the reference code; highlights what
            raises it) or a function ``target(y_true, y_pred) -> (B,)`` scores
            (register it with ``keras.saving.register_keras_serializable`` to
            save the model).
        output: for a model with several outputs, the one whose score is
            attributed (index or name; the loss still uses all outputs).
        normalize: ``"image"`` (each map to [0, 1]) or ``"batch"`` (one
            min-max over the batch, as the reference code).
        mask: ``"box"``: a box with the image's aspect ratio centred on the
            map's peak (a span of steps for sequences, a 3-D box for
            volumes); ``"threshold"``: the highest-attribution pixels
            covering the sampled area.
        border: a box that would cross the image border is ``"shift"``-ed
            inside it (default: every box masks the sampled area, to the
            pixel grid, wherever it is placed, and holds its centre) or
            ``"clip"``-ped (the authors' code: a box near the border masks
            less, and a random place is nearer the border than the peak).
        placement: where the mask goes: ``"peak"`` (GradMix: the box centred
            on the map's maximum, the threshold mask on its highest pixels),
            ``"random"`` (the control that isolates the attribution: the box
            centred uniformly at random over the image, the threshold mask on
            as many pixels drawn at random; everything else identical) or
            ``"low"`` (the least-attended place: the box centred on the map's
            minimum, the threshold mask on its lowest pixels).
        mask_area: ``(low, high)`` range of the masked fraction of the image.
        alpha, beta: the masked fraction is ``high - (high - low) * u`` with
            ``u ~ Beta(alpha, beta)``, i.e. the paper's
            ``lam = 0.5 + 0.4 * Beta(alpha, beta)`` for the default range.
        area_sampling: ``"batch"``: one area per batch (reference code);
            ``"sample"``: one per image.
        fill: ``"noise"`` (uniform in ``value_range``, one value per pixel
            shared by channels, as the paper's code), ``"mix"`` (the box of a
            partner image from the shuffled batch; labels mixed by area),
            ``"shuffle"`` (the masked pixels permuted at random within the
            image, ASCOOD's outliers) or a number (a constant).
        label_mode: weight of each masked image's own label (and, with
            ``fill="mix"``, of its partner's): ``"area"``, the kept (pasted)
            area fraction; ``"attribution"``, the kept (pasted) share of the
            attribution mass, as SnapMix.
        probability: each sample is masked with this probability; the others
            stay clean (in paired mode their masked term gets weight 0). An
            image whose map is flat (no positive attribution) stays clean too.
            Saves no compute: every image is still forwarded twice.
        masked_fraction: paired mode only: mask and forward only ``ceil(f B)``
            images of each batch, chosen at random per step (a static shape,
            XLA-safe), so the masked pass costs ``f`` of a full one; their term
            is weighted by ``f``, so the expected loss is that of masking each
            image with probability ``f``.
        warmup_epochs: no masking during the first ``k`` epochs of ``fit``
            (the attribution of an untrained model is noise); fed to the
            compiled step through a variable, so it is not retraced.
        stop_epoch: no masking from this epoch on (None: never stop).
        area_ramp_epochs: the masked area grows linearly over this many
            epochs after the warm-up (``(epoch - warmup + 1) / k`` of it).
        probability_ramp_epochs: the masked share (``probability``, or the
            share of the ``masked_fraction`` images masked) grows linearly
            alike; the compute of ``masked_fraction`` stays fixed.
        policy: per batch, the transformation of the second (masked) batch:
            ``{"gradmix": p, "cutmix": q, "mixup": r}`` (normalised; None:
            GradMix only), as timm's ``switch_prob``. CutMix pastes a random
            box of a partner image (area ``1 - lam``, ``lam ~
            Beta(cutmix_alpha)``), MixUp blends ``lam x + (1 - lam) x_p``
            (``lam ~ Beta(mixup_alpha)``); labels weighted ``lam`` / ``1 - lam``
            as those methods define; XLA-safe Beta draws.
        cutmix_alpha, mixup_alpha: their Beta parameters (1.0, and 0.2 as
            Keras' ``MixUp``).
        value_range: ``(low, high)`` of the images as fed (raw pixels, before
            ``normalization``), used for the noise. None: read from the model,
            ``(0, 255)`` for a KerasHub task with an image converter or a
            model that starts with ``Rescaling(1/255)`` or
            ``Rescaling(1/127.5, offset=-1)``, else ``(0, 1)``.
        normalization: ``(mean, std)`` per channel when the images are fed
            standardised, ``(raw - mean) / std`` with raw pixels in
            ``value_range``: the noise is drawn in raw pixels and standardised
            alike, so masked regions look like pixels of the data.
        prefix_tokens, token_grid: for a layer with a token output
            ``(B, N, C)``, the leading non-patch tokens (class, distillation,
            register tokens) and the ``(h, w)`` patch grid; None infers them
            from ``N`` and the image's aspect ratio.
        unselectable_token_ids: token ids never masked (``(0,)``: the padding of
            ``TextVectorization``, as KerasHub's ``MaskedLMMaskGenerator``); add
            a [CLS]-pooled model's special tokens. Token ids take an id as ``fill``.
        masked_as: ``"positive"`` (the paper): the masked images keep their
            labels (weighted as ``label_mode`` says); ``"outlier"``: they are
            negatives, trained toward the uniform distribution over the known
            classes (outlier exposure, Hendrycks et al. 2019; ASCOOD):
            ``loss = L(clean) + outlier_weight * mean_i a_i s_i (-1/K sum_k
            log softmax_k(f(x~_i)))`` with ``a_i`` whether image ``i`` was
            transformed and ``s_i`` its sample weight. Paired mode only; with
            ``fill="mix"`` or a CutMix/MixUp ``policy`` the mixed images are
            the outliers (as OpenMix). The compiled loss must say whether the
            model outputs logits (a Keras cross-entropy).
        outlier_weight: the weight of the outlier term (0.5, Hendrycks et
            al.'s value for vision).
        auxiliary_positives: with ``masked_as="outlier"``, beside each outlier
            a positive copy of the image with a mask of the same shape and area
            at the least-attended place, its label kept (weighted by the kept
            area), so that a mask itself says nothing about the label
            (OpenMix+'s auxiliary positives): one more term in the loss, and
            ``2k`` images in the masked pass.
        bn_statistics: ``"clean"``: BatchNorm running statistics are updated
            once per step, from the clean batch (the masked pass uses its own
            batch statistics, its moving-average updates are discarded);
            ``"all"``: every pass updates them, as the reference code.
        seed: int for reproducible masks (one backend reproduces its own run).
        check_inputs: look at the first batch of every ``fit`` before training
            (pixels finite and in ``value_range``, labels valid class indices,
            :mod:`keras_gradmix.inspection`) and every step's floating inputs
            (finite, :mod:`keras_gradmix.guard`); False skips both.
        check_every: after a bad batch ``fit`` stops at the next step's end
            where Keras reads the logs at once (TensorFlow), and at the latest
            this many steps after it (JAX and PyTorch read them in a thread):
            every ``check_every`` steps it reads the guard's record on the
            host (:mod:`keras_gradmix.guard`); 0: no such read.

    Examples:

    ```python
    from keras_gradmix import GradMixConfig
    options = GradMixConfig(attribution="layercam", mask_area=(0.2, 0.4))
    options.replace(mode="replace").get_config()["mode"]   # 'replace'
    ```
    """

    attribution: str = "layercam"
    mode: str = "paired"
    target: Any = "label"
    normalize: str = "image"
    mask: str = "box"
    placement: str = "peak"
    border: str = "shift"
    mask_area: tuple[float, float] = (0.1, 0.5)
    alpha: float = 1.0
    beta: float = 1.0
    area_sampling: str = "batch"
    fill: Any = "noise"
    label_mode: str = "area"
    probability: float = 1.0
    masked_fraction: float = 1.0
    warmup_epochs: int = 0
    stop_epoch: int | None = None
    area_ramp_epochs: int = 0
    probability_ramp_epochs: int = 0
    policy: Any = None
    cutmix_alpha: float = 1.0
    mixup_alpha: float = 0.2
    value_range: tuple[float, float] | None = None
    normalization: Any = None
    masked_as: str = "positive"
    outlier_weight: float = 0.5
    auxiliary_positives: bool = False
    bn_statistics: str = "clean"
    seed: int | None = None
    check_inputs: bool = True
    check_every: int = 50
    output: int | str | None = None
    prefix_tokens: int | None = None
    token_grid: tuple[int, int] | None = None
    unselectable_token_ids: tuple[int, ...] = (0,)

    def __post_init__(self):
        checked = dict(
            attribution=check_choice("attribution", self.attribution, tuple(attribution.METHODS)),
            mode=check_choice("mode", self.mode, MODES),
            target=check_target(self.target),
            normalize=check_choice("normalize", self.normalize, attribution.NORMALIZATIONS),
            mask=check_choice("mask", self.mask, tuple(masks.MASKS)),
            placement=check_choice("placement", self.placement, masks.PLACEMENTS),
            border=check_choice("border", self.border, masks.BORDERS),
            mask_area=masks.validate_mask_area(self.mask_area),
            area_sampling=check_choice("area_sampling", self.area_sampling, AREA_SAMPLING),
            fill=mixing.validate_fill(self.fill),
            label_mode=check_choice("label_mode", self.label_mode, LABEL_MODES),
            probability=_fraction("probability", self.probability),
            warmup_epochs=_epochs("warmup_epochs", self.warmup_epochs),
            masked_fraction=_fraction("masked_fraction", self.masked_fraction),
            stop_epoch=check_optional_count("stop_epoch", self.stop_epoch),
            area_ramp_epochs=_epochs("area_ramp_epochs", self.area_ramp_epochs),
            probability_ramp_epochs=_epochs("probability_ramp_epochs", self.probability_ramp_epochs),
            policy=_policy(self.policy),
            cutmix_alpha=_positive("cutmix_alpha", self.cutmix_alpha),
            mixup_alpha=_positive("mixup_alpha", self.mixup_alpha),
            value_range=None if self.value_range is None else _value_range(self.value_range),
            normalization=_normalization(self.normalization),
            output=check_output(self.output),
            prefix_tokens=check_optional_count("prefix_tokens", self.prefix_tokens),
            token_grid=check_grid(self.token_grid),
            unselectable_token_ids=_ids(self.unselectable_token_ids),
            masked_as=check_choice("masked_as", self.masked_as, MASKED_AS),
            outlier_weight=_positive("outlier_weight", self.outlier_weight),
            auxiliary_positives=_flag("auxiliary_positives", self.auxiliary_positives),
            bn_statistics=check_choice("bn_statistics", self.bn_statistics, BN_STATISTICS),
            seed=_seed(self.seed),
            check_inputs=_flag("check_inputs", self.check_inputs),
            check_every=_epochs("check_every", self.check_every),
        )
        checked["alpha"], checked["beta"] = masks.validate_beta(self.alpha, self.beta)
        if checked["masked_fraction"] == 0:
            raise ValueError("masked_fraction must be in (0, 1], got 0.")
        if checked["masked_fraction"] < 1 and checked["mode"] != "paired":
            raise ValueError(
                f"masked_fraction={checked['masked_fraction']} needs mode='paired': replace mode "
                f"trains on the masked batch only, so it cannot mask only part of it.")
        if checked["stop_epoch"] is not None and checked["stop_epoch"] <= checked["warmup_epochs"]:
            raise ValueError(
                f"stop_epoch ({checked['stop_epoch']}) must come after warmup_epochs "
                f"({checked['warmup_epochs']}): no epoch would be masked.")
        if checked["masked_as"] == "outlier":
            _check_outlier(checked)
        elif checked["auxiliary_positives"]:
            raise ValueError(
                "auxiliary_positives=True adds positives beside masked images used as outliers; "
                "it needs masked_as='outlier'.")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> "GradMixConfig":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def get_config(self) -> dict:
        """Plain, JSON-friendly values (pairs as lists)."""
        config = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if config["policy"] is not None:
            config["policy"] = dict(config["policy"])
        for name in ("mask_area", "value_range", "token_grid", "unselectable_token_ids"):
            if config[name] is not None:
                config[name] = list(config[name])
        if config["normalization"] is not None:
            config["normalization"] = [list(v) for v in config["normalization"]]
        if callable(config["target"]):
            config["target"] = keras.saving.serialize_keras_object(config["target"])
        return config

    @classmethod
    def from_config(cls, config: dict) -> "GradMixConfig":
        return cls(**config)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The option names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))


def _check_outlier(checked: dict) -> None:
    """Options that have no meaning for masked images used as outliers."""
    if checked["mode"] != "paired":
        raise ValueError(
            "masked_as='outlier' needs mode='paired': the masked images are negatives "
            "trained toward the uniform distribution, so the clean batch must carry the "
            "labels; replace mode would train on no labelled image.")
    if checked["auxiliary_positives"] and (checked["fill"] == "mix" or checked["policy"]):
        raise ValueError(
            "auxiliary_positives=True masks GradMix's own images at their least-attended "
            "place; with fill='mix' or a CutMix/MixUp policy there is no such mask. Use "
            "fill='noise', 'shuffle' or a number, and no policy.")
    if checked["label_mode"] != "area":
        raise ValueError(
            f"label_mode={checked['label_mode']!r} weighs the labels masked images keep; with "
            f"masked_as='outlier' they keep none. Leave label_mode at 'area'.")


def split_options(kwargs: dict, keras_arguments=("name", "dtype", "trainable")) -> tuple[dict, dict]:
    """GradMix options and the wrapper's ``keras.Model`` arguments from one
    set of keyword arguments; anything else is an error naming the closest option."""
    fields = GradMixConfig.fields()
    unknown = [k for k in kwargs if k not in fields and k not in keras_arguments]
    if unknown:
        hints = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        hint = "".join(f" Did you mean {v[0]!r} for {k!r}?" for k, v in hints.items() if v)
        raise ValueError(f"Unknown GradMix option(s) {unknown}.{hint} Options: {list(fields)}.")
    return ({k: v for k, v in kwargs.items() if k in fields},
            {k: v for k, v in kwargs.items() if k not in fields})
