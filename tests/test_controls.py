"""The attribution controls: where the mask goes (``placement``) and how the
masked images enter the loss (``masked_as``), against hand-built maps and an
independent NumPy loss, on every backend, compiled and saved."""

import keras
import numpy as np
import pytest
from conftest import mnist_cnn, sequential_cnn, sparse_ce, to_numpy, xla, xla_only
from reference import cross_entropy

from keras_gradmix import (
    GradMixConfig,
    GradMixModel,
    MaskedBatch,
    apply_transformation,
    box_masks,
    sample_transformation,
    threshold_masks,
)
from keras_gradmix.contrastive import GradMixContrastive
from keras_gradmix.masks import placement_scores
from keras_gradmix.objectives import outlier_loss


def boxes(maps, placement, draw=None, area=1 / 16):
    mask, _ = box_masks(placement_scores(maps, placement, draw), area)
    return to_numpy(mask)


def one_hot_map(position, shape=(4, 4), value=1.0):
    m = np.zeros(shape, "float32")
    m[position] = value
    return m


# ---------------------------------------------------------------- placement
def test_peak_is_the_map_itself():
    maps = np.random.default_rng(0).random((2, 4, 4)).astype("float32")
    assert placement_scores(maps, "peak") is maps


def test_random_places_the_box_at_the_draw_s_maximum_whatever_the_map():
    maps = one_hot_map((0, 0))[None]
    draw = one_hot_map((2, 3), value=0.9)[None] + 0.05
    np.testing.assert_array_equal(boxes(maps, "random", draw)[0], one_hot_map((2, 3)) > 0)


def test_low_places_the_box_at_the_minimum():
    maps = np.full((1, 4, 4), 0.5, "float32")
    maps[0, 3, 1] = 0.1  # the one minimum
    maps[0, 0, 0] = 1.0
    draw = one_hot_map((0, 2))[None]  # the draw only breaks ties among minima
    np.testing.assert_array_equal(boxes(maps, "low", draw)[0], one_hot_map((3, 1)) > 0)


def test_low_breaks_ties_among_minima_with_the_draw_not_raster_order():
    maps = np.ones((1, 4, 4), "float32")
    maps[0, 0, 0] = maps[0, 2, 3] = 0.0  # two minima; raster order would take (0, 0)
    draw = np.zeros((1, 4, 4), "float32")
    draw[0, 1, 1] = 0.99  # the largest draw, but not at a minimum
    draw[0, 2, 3] = 0.5
    draw[0, 0, 0] = 0.2
    np.testing.assert_array_equal(boxes(maps, "low", draw)[0], one_hot_map((2, 3)) > 0)


def test_threshold_masks_take_the_lowest_or_random_pixels():
    maps = np.arange(16, dtype="float32").reshape(1, 4, 4)
    draw = np.random.default_rng(1).random((1, 4, 4)).astype("float32")
    low, _ = threshold_masks(placement_scores(maps, "low", draw), 0.25)
    np.testing.assert_array_equal(to_numpy(low)[0], maps[0] < 4)  # the four lowest pixels
    random, masked = threshold_masks(placement_scores(maps, "random", draw), 0.25)
    np.testing.assert_array_equal(to_numpy(random)[0], draw[0] >= np.sort(draw.ravel())[-4])
    assert float(to_numpy(masked)[0]) == 0.25


def test_random_centres_are_uniform_and_every_other_draw_is_the_peak_s():
    peak = GradMixConfig(area_sampling="sample", probability=0.5)
    t_peak = sample_transformation(peak, 4096, (4, 4), seed=7)
    t_rand = sample_transformation(peak.replace(placement="random"), 4096, (4, 4), seed=7)
    assert t_peak.placement is None
    for name in ("area", "sampled", "noise"):  # the same areas, masked images and noise
        np.testing.assert_array_equal(to_numpy(getattr(t_peak, name)), to_numpy(getattr(t_rand, name)))
    draw = to_numpy(t_rand.placement)
    assert draw.shape == (4096, 4, 4)
    counts = np.bincount(draw.reshape(4096, -1).argmax(axis=1), minlength=16)
    assert counts.min() > 190 and counts.max() < 330  # 256 expected per pixel (sd 15.5)


@pytest.mark.parametrize("mask", ["box", "threshold"])
@pytest.mark.parametrize("placement", ["random", "low"])
def test_preview_masks_the_same_area_elsewhere(batch, mask, placement):
    x, y = batch
    options = dict(mask=mask, mask_area=(0.25, 0.25), fill=0.5, attribution="layercam")
    peak = GradMixModel(sequential_cnn(), "conv2", **options).preview(x, y, seed=1)
    other = GradMixModel(sequential_cnn(), "conv2", placement=placement, **options).preview(x, y, seed=1)
    applied = to_numpy(peak.applied)
    np.testing.assert_array_equal(applied, to_numpy(other.applied))
    assert (to_numpy(peak.mask) != to_numpy(other.mask)).any()
    # The same area wherever the mask lands (a 14 x 14 box, shifted inside the
    # image near the border; 196 pixels), and the label weights follow it.
    for out in (peak, other):
        area = to_numpy(out.mask).mean(axis=(1, 2))
        np.testing.assert_allclose(area[applied], 0.25)
        np.testing.assert_allclose(to_numpy(out.own)[applied], 0.75, rtol=1e-6)
    maps, masks = to_numpy(other.maps), to_numpy(other.mask)
    if placement == "low":  # the box holds a minimum; the threshold mask the lowest pixels
        low = [m[k].max() <= m[~k].min() if mask == "threshold" else m[k].min() == m.min()
               for m, k in zip(maps, masks) if k.any()]
        assert low and all(low)


def corner_and_edge_inputs(placement):
    """Maps, and draws, whose peak, random place or least-attended place is
    in a corner or on an edge of an 8 x 10 image (one image each)."""
    spots = [(0, 0), (0, 9), (7, 0), (7, 9), (0, 4), (7, 5), (3, 0), (4, 9)]
    maps = np.full((len(spots), 8, 10), 0.5, "float32")
    draw = np.full((len(spots), 8, 10), 0.1, "float32")
    for i, (r, c) in enumerate(spots):
        if placement == "peak":
            maps[i, r, c] = 1.0
        elif placement == "low":
            maps[i, r, c], maps[i, 3, 3] = 0.0, 1.0
        else:
            maps[i, 3, 3], draw[i, r, c] = 1.0, 0.9
    return maps, draw, spots


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("mask", ["box", "threshold"])
@pytest.mark.parametrize("placement", ["peak", "random", "low"])
def test_every_placement_masks_the_area_asked_at_corners_and_edges(placement, mask, compiled):
    # 0.2 of 8 x 10: a box of round(8 * 0.447) x round(10 * 0.447) = 4 x 4 = 16 px,
    # a threshold mask of round(0.2 * 80) = 16 px: the same pixel count.
    options = GradMixConfig(placement=placement, mask=mask, mask_area=(0.2, 0.2), fill=0.0)
    maps, draw, spots = corner_and_edge_inputs(placement)
    images = np.ones((len(spots), 8, 10, 1), "float32")

    def masked(images, maps, draw):
        t = sample_transformation(options, len(spots), (8, 10), seed=0)
        out = apply_transformation(images, maps, t._replace(placement=draw), options)
        return out.mask, out.area, out.own

    if compiled:
        masked = xla(masked)
    mask_, area, own = (to_numpy(v) for v in masked(images, maps, draw))
    np.testing.assert_array_equal(mask_.sum(axis=(1, 2)), 16)
    np.testing.assert_allclose(area, 0.2)  # gradmix_area's per-image share
    np.testing.assert_allclose(own, 0.8)
    rows, cols = zip(*spots)
    assert mask_[np.arange(len(spots)), rows, cols].all()  # the chosen place is masked
    if mask == "box":  # the authors' clipping, one option away, masks less at every spot
        clip = options.replace(border="clip")
        t = sample_transformation(clip, len(spots), (8, 10), seed=0)._replace(placement=draw)
        out = apply_transformation(images, maps, t, clip)
        assert (to_numpy(out.mask).sum(axis=(1, 2)) < 16).all()
        np.testing.assert_allclose(to_numpy(out.area), to_numpy(out.mask).mean(axis=(1, 2)))


@xla_only
@pytest.mark.parametrize("placement", ["random", "low"])
def test_placement_compiles_with_xla(placement):
    options = GradMixConfig(placement=placement, mask_area=(0.25, 0.25), fill=0.0)
    rng = np.random.default_rng(0)
    maps, draw = (rng.random((3, 8, 8)).astype("float32") for _ in range(2))
    images = np.ones((3, 8, 8, 1), "float32")

    def masked(images, maps, draw):
        t = sample_transformation(options, 3, (8, 8), seed=0)._replace(placement=draw)
        return apply_transformation(images, maps, t, options).mask

    np.testing.assert_array_equal(to_numpy(xla(masked)(images, maps, draw)),
                                  to_numpy(masked(images, maps, draw)))
    drawn = xla(lambda: sample_transformation(options, 3, (8, 8), seed=0).placement)()
    assert tuple(drawn.shape) == (3, 8, 8)


# ----------------------------------------------------------- masked as outlier
def uniform_cross_entropy(y_pred, from_logits=True):
    """-(1/K) sum_k log p_k, in float64 NumPy."""
    y_pred = np.asarray(y_pred, np.float64)
    if from_logits:
        shifted = y_pred - y_pred.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    else:
        log_p = np.log(np.clip(y_pred, 1e-7, 1.0))
    return -log_p.mean(axis=1)


def test_outlier_loss_is_the_cross_entropy_to_the_uniform_distribution():
    logits = np.random.default_rng(2).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(outlier_loss(logits)), uniform_cross_entropy(logits), rtol=1e-5)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(to_numpy(outlier_loss(probs, from_logits=False)),
                               uniform_cross_entropy(probs, False), rtol=1e-5)
    uniform = np.zeros((1, 4), "float32")
    np.testing.assert_allclose(to_numpy(outlier_loss(uniform)), [np.log(4)], rtol=1e-6)  # its minimum


def outlier_model(loss=None, **options):
    gm = GradMixModel(sequential_cnn(), "conv2", masked_as="outlier", **options)
    gm.compile(optimizer="sgd", loss=loss or sparse_ce())
    return gm


def test_outlier_term_weighs_transformed_images_by_sample_weight_and_outlier_weight():
    gm = outlier_model(outlier_weight=0.3)
    labels = np.array([0, 2, 1, 3])
    logits = np.random.default_rng(3).normal(size=(4, 10)).astype("float32")
    applied = np.array([True, True, False, True])
    sw = np.array([1.0, 2.0, 1.0, 0.0], "float32")
    masked = MaskedBatch(None, None, None, np.full(4, 0.7, "float32"), None, None, applied)
    terms = gm.gradmix_terms(None, labels, None, 0.25, logits, sw, masked)
    assert set(terms) == {"clean", "outlier"}  # the labels of masked images are not used
    expected = 0.3 * np.mean(sw * applied * uniform_cross_entropy(logits))
    np.testing.assert_allclose(float(to_numpy(terms["outlier"])), expected, rtol=1e-5)
    np.testing.assert_allclose(float(to_numpy(gm.gradmix_loss(None, labels, None, 0.25, logits, sw, masked))),
                               0.25 + expected, rtol=1e-5)


def test_outlier_term_of_a_masked_fraction_is_scaled_by_it():
    gm = outlier_model(masked_fraction=0.5)
    logits = np.random.default_rng(4).normal(size=(2, 10)).astype("float32")  # k = 2 of 4 images
    sw = np.array([1.0, 2.0, 3.0, 4.0], "float32")
    index = np.array([3, 1])
    masked = MaskedBatch(None, None, None, np.ones(2, "float32"), None, None,
                         np.array([True, True]), index=index)
    term = gm.gradmix_terms(None, np.zeros(4, "int32"), None, 0.0, logits, sw, masked)["outlier"]
    expected = 0.5 * np.mean(0.5 * sw[index] * uniform_cross_entropy(logits))
    np.testing.assert_allclose(float(to_numpy(term)), expected, rtol=1e-5)


STEP = dict(mask_area=(0.25, 0.25), fill=0.5, attribution="layercam", seed=0)


def jit_choices():
    return [False, True] if keras.backend.backend() in ("tensorflow", "jax") else [False]


@pytest.mark.parametrize("jit", jit_choices())
@pytest.mark.parametrize("outputs", ["logits", "probabilities"])
def test_one_step_loss_is_clean_plus_the_outlier_term_computed_in_numpy(mnist, outputs, jit):
    x, y = mnist[0][:16], mnist[1][:16]
    sw = np.linspace(0.0, 2.0, 16).astype("float32")
    model = sequential_cnn()
    if outputs == "probabilities":
        model = keras.Sequential([model, keras.layers.Softmax()])
        loss = keras.losses.SparseCategoricalCrossentropy()
    else:
        loss = sparse_ce()
    layer = "conv2" if outputs == "logits" else "sequential_cnn/conv2"
    gm = GradMixModel(model, layer, masked_as="outlier", **STEP)
    gm.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit)
    preview = gm.preview(x, y)  # placement "peak", a fixed area and fill: the step's masks
    predict = lambda images: to_numpy(model(images, training=True))  # noqa: E731
    from_logits = outputs == "logits"
    clean = predict(x)
    clean_ce = (cross_entropy(clean, y) if from_logits
                else -np.log(np.clip(clean[np.arange(16), y], 1e-7, 1.0)))
    applied = to_numpy(preview.applied).astype(np.float64)
    assert applied.sum() > 8
    expected = (np.mean(sw * clean_ce)
                + 0.5 * np.mean(sw * applied * uniform_cross_entropy(predict(to_numpy(preview.images)),
                                                                     from_logits)))
    logs = gm.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)


def test_outliers_train_masked_images_toward_uniform(mnist):
    """Masked images as outliers drive the masked predictions toward uniform;
    as positives they drive them toward the label."""
    x, y = mnist[0][:512], mnist[1][:512]
    entropy = {}
    for masked_as in ("positive", "outlier"):
        model = mnist_cnn()
        gm = GradMixModel(model, "conv2", masked_as=masked_as, mask_area=(0.4, 0.4), fill=0.0, seed=0)
        gm.compile(optimizer=keras.optimizers.Adam(3e-3), loss=sparse_ce())
        gm.fit(x, y, batch_size=64, epochs=3, verbose=0)
        probs = keras.ops.softmax(model(to_numpy(gm.preview(x, y).images)))
        p = to_numpy(probs).astype(np.float64)
        entropy[masked_as] = float(np.mean(-(p * np.log(p + 1e-12)).sum(axis=1)))
    assert entropy["outlier"] > entropy["positive"] + 0.2, entropy


def test_outlier_and_placement_save_and_load(tmp_path, batch):
    x, y = batch
    gm = outlier_model(placement="random", outlier_weight=0.3, mask="threshold", auxiliary_positives=True)
    gm.fit(x, y, batch_size=4, epochs=1, verbose=0)
    gm.save(tmp_path / "controls.keras")
    loaded = keras.saving.load_model(tmp_path / "controls.keras")
    for name, value in (("placement", "random"), ("masked_as", "outlier"), ("outlier_weight", 0.3),
                        ("auxiliary_positives", True)):
        assert getattr(loaded.options, name) == value
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), gm.predict(x, verbose=0))
    assert np.isfinite(loaded.fit(x, y, epochs=1, verbose=0).history["loss"]).all()


@pytest.mark.parametrize("jit", jit_choices())
@pytest.mark.parametrize("border", ["shift", "clip"])
def test_border_trains_compiled_and_survives_save_and_load(tmp_path, batch, border, jit):
    x, y = batch
    gm = GradMixModel(sequential_cnn(), "conv2", border=border, **STEP)
    gm.compile(optimizer=keras.optimizers.SGD(0.01), loss=sparse_ce(), jit_compile=jit)
    area = gm.fit(x, y, batch_size=8, epochs=1, verbose=0).history["gradmix_area"][0]
    preview = gm.preview(x, y)
    shares = to_numpy(preview.mask).mean(axis=(1, 2))[to_numpy(preview.applied)]
    if border == "shift":  # 14 x 14 of 28 x 28 wherever the box lands
        np.testing.assert_allclose([area, *shares], 0.25, rtol=1e-6)
    else:
        assert area <= 0.25 + 1e-6 and (shares <= 0.25 + 1e-6).all()
    gm.save(tmp_path / "border.keras")
    loaded = keras.saving.load_model(tmp_path / "border.keras")
    assert loaded.options.border == border
    np.testing.assert_array_equal(to_numpy(loaded.preview(x, y).mask), to_numpy(preview.mask))


@pytest.mark.parametrize("jit", jit_choices())
@pytest.mark.parametrize("options", [
    dict(placement="random"), dict(placement="low", mask="threshold"),
    dict(masked_as="outlier", placement="random", masked_fraction=0.5),
    dict(masked_as="outlier", fill="mix"),
    dict(masked_as="outlier", policy={"gradmix": 0.5, "cutmix": 0.25, "mixup": 0.25}),
    dict(masked_as="outlier", auxiliary_positives=True, masked_fraction=0.5, mask="threshold"),
], ids=["random", "low-threshold", "outlier-random-half", "outlier-mix", "outlier-policy",
        "outlier-auxiliary-half"])
def test_the_options_train_compiled_and_not(batch, options, jit):
    x, y = batch
    model = sequential_cnn()
    gm = GradMixModel(model, "conv2", seed=0, **options)
    gm.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce(), jit_compile=jit)
    before = [to_numpy(w) for w in model.trainable_weights]
    history = gm.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["gradmix_masked"][0] > 0
    assert any(not np.allclose(a, to_numpy(b)) for a, b in zip(before, model.trainable_weights))


def test_the_contrastive_recipe_takes_random_placement(batch):
    x, y = batch
    encoder = keras.Sequential([keras.Input((28, 28, 1)), *sequential_cnn().layers[:-1],
                                keras.layers.Dense(8)])
    gm = GradMixContrastive(encoder, "conv2", placement="random", seed=0)
    gm.compile(optimizer="sgd")
    history = gm.fit(np.stack([x, x], axis=1), y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["gradmix_masked"][0] > 0
    assert gm.options.placement == "random"


@pytest.mark.parametrize("jit", jit_choices())
def test_pixel_outliers_shuffle_the_top_attributed_pixels_and_train_toward_uniform(mnist, jit):
    """ASCOOD's outliers: the top quarter of each map's pixels (a threshold
    mask) shuffled within the image, trained toward the uniform distribution;
    the step's loss is the clean loss plus that term, computed in NumPy."""
    x, y = mnist[0][:16], mnist[1][:16]
    model = sequential_cnn()
    gm = GradMixModel(model, "conv2", masked_as="outlier", mask="threshold", fill="shuffle",
                      mask_area=(0.25, 0.25), seed=0)
    gm.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce(), jit_compile=jit)
    preview = gm.preview(x, y)
    mask, maps, images = (to_numpy(v) for v in (preview.mask, preview.maps, preview.images))
    applied = to_numpy(preview.applied)
    assert applied.sum() > 8
    for i in np.flatnonzero(applied):
        assert mask[i].sum() == 196 and maps[i][mask[i]].min() >= maps[i][~mask[i]].max()
        np.testing.assert_array_equal(images[i][~mask[i]], x[i][~mask[i]])
        np.testing.assert_array_equal(np.sort(images[i][mask[i]], axis=0), np.sort(x[i][mask[i]], axis=0))
    predict = lambda batch: to_numpy(model(batch, training=True))  # noqa: E731
    expected = (np.mean(cross_entropy(predict(x), y))
                + 0.5 * np.mean(applied * uniform_cross_entropy(predict(images))))
    logs = gm.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)


@pytest.mark.parametrize("jit", jit_choices())
def test_auxiliary_positives_mask_the_least_attended_place_and_keep_their_label(mnist, jit):
    """Beside each outlier (a box at the peak, trained toward uniform) a positive
    copy with the same box at the least-attended place, label kept (weight:
    the kept area); the loss is clean + outlier + auxiliary, computed in NumPy."""
    x, y = mnist[0][:16], mnist[1][:16]
    model = sequential_cnn()
    gm = GradMixModel(model, "conv2", masked_as="outlier", auxiliary_positives=True,
                      mask_area=(0.25, 0.25), fill=0.0, seed=0)
    gm.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce(), jit_compile=jit)
    preview = gm.preview(x, y)
    images, maps, mask = (to_numpy(v) for v in (preview.images, preview.maps, preview.mask))
    applied = to_numpy(preview.applied)
    assert images.shape[0] == 32 and applied.sum() > 8
    outliers, positives = images[:16], images[16:]
    np.testing.assert_allclose(to_numpy(preview.auxiliary), np.where(applied, 0.75, 0.0))
    for i in np.flatnonzero(applied):
        assert mask[i].sum() == 196 and (outliers[i][mask[i]] == 0).all()
        # The positive: zeros in a 14 x 14 box that holds a minimum of the map, the rest as it was.
        zeros = positives[i][..., 0] == 0
        boxes = [(r, c) for r in range(15) for c in range(15) if zeros[r:r + 14, c:c + 14].all()
                 and np.array_equal(positives[i][..., 0] != x[i][..., 0],
                                    np.pad(np.ones((14, 14), bool), ((r, 14 - r), (c, 14 - c)))
                                    & (x[i][..., 0] != 0))]
        assert any(maps[i][r:r + 14, c:c + 14].min() == maps[i].min() for r, c in boxes), i
    predict = lambda batch: to_numpy(model(batch, training=True))  # noqa: E731
    expected = (np.mean(cross_entropy(predict(x), y))
                + 0.5 * np.mean(applied * uniform_cross_entropy(predict(outliers)))
                + np.mean(np.where(applied, 0.75, 0.0) * cross_entropy(predict(positives), y)))
    logs = gm.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)


@pytest.mark.parametrize("options, match", [
    (dict(auxiliary_positives=True), "needs masked_as='outlier'"),
    (dict(auxiliary_positives=True, masked_as="outlier", fill="mix"), "no such mask"),
])
def test_auxiliary_positives_errors(options, match):
    with pytest.raises(ValueError, match=match):
        GradMixConfig(**options)
