"""GradMix over any grid: sequences (B, T, C) and volumes (B, D, H, W, C)."""

import keras
import numpy as np
import pytest
from conftest import sparse_ce, to_numpy, xla

import keras_gradmix
from keras_gradmix import Attributor, GradMixModel, box_masks, peak_positions, threshold_masks
from keras_gradmix.attribution import gradcam, layercam, resize_maps
from keras_gradmix.masks import placement_scores
from keras_gradmix.mixing import apply_fill

# ----------------------------------------------------------------- maths
def test_intervals_at_the_peak_are_shifted_inside_and_area_exact():
    # T = 20, area 0.25 -> a span of 5 steps, [t - 2, t + 3), moved inside [0, 20).
    peaks = [0, 1, 10, 18, 19]
    maps = np.zeros((5, 20), "float32")
    maps[np.arange(5), peaks] = 1.0
    mask, masked = box_masks(maps, 0.25)
    expected = np.zeros((5, 20), bool)
    for i, start in enumerate([0, 0, 8, 15, 15]):
        expected[i, start:start + 5] = True
    np.testing.assert_array_equal(to_numpy(mask), expected)
    np.testing.assert_allclose(to_numpy(masked), 0.25)
    clipped, share = box_masks(maps, 0.25, border="clip")
    np.testing.assert_allclose(to_numpy(share), [3 / 20, 4 / 20, 5 / 20, 4 / 20, 3 / 20])
    np.testing.assert_allclose(to_numpy(clipped).mean(axis=1), to_numpy(share))


def test_volume_boxes_at_the_peak():
    # 4 x 6 x 8 volume, area 1/8 -> sides round(S / 2) = 2 x 3 x 4, shifted inside.
    maps = np.zeros((2, 4, 6, 8), "float32")
    maps[0, 1, 2, 3] = 1.0
    maps[1, 3, 5, 7] = 1.0  # the far corner
    assert [tuple(to_numpy(p)) for p in peak_positions(maps)] == [(1, 3), (2, 5), (3, 7)]
    mask, masked = box_masks(maps, 1 / 8)
    expected = np.zeros((2, 4, 6, 8), bool)
    expected[0, 0:2, 1:4, 1:5] = True  # [c - side // 2, + side) on each axis
    expected[1, 2:4, 3:6, 4:8] = True
    np.testing.assert_array_equal(to_numpy(mask), expected)
    np.testing.assert_allclose(to_numpy(masked), 24 / 192)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("shape", [(30,), (5, 6, 7)])
@pytest.mark.parametrize("placement", ["peak", "random", "low"])
def test_every_placement_masks_the_area_asked(shape, placement, compiled):
    rng = np.random.default_rng(0)
    maps = rng.random((6, *shape)).astype("float32")
    draw = rng.random((6, *shape)).astype("float32")
    area = 0.3

    def fn(m, d):
        where = placement_scores(m, placement, d)
        return box_masks(where, area), threshold_masks(where, area)

    (box, share), (pixels, pixel_share) = (xla(fn) if compiled else fn)(maps, draw)
    sides = [int(np.floor(s * area ** (1 / len(shape)) + 0.5)) for s in shape]
    size = int(np.prod(shape))
    np.testing.assert_array_equal(to_numpy(box).reshape(6, -1).sum(axis=1), np.prod(sides))
    np.testing.assert_allclose(to_numpy(share), np.prod(sides) / size)
    np.testing.assert_array_equal(to_numpy(pixels).reshape(6, -1).sum(axis=1), round(area * size))
    np.testing.assert_allclose(to_numpy(pixel_share), round(area * size) / size)
    if placement == "peak":  # the top places are the highest values
        flat = maps.reshape(6, -1)
        top = np.argsort(-flat, axis=1)[:, :round(area * size)]
        np.testing.assert_array_equal(np.sort(np.flatnonzero(to_numpy(pixels)[0])), np.sort(top[0]))


def test_linear_resize_of_sequences_and_volumes():
    maps = np.array([[0.0, 1.0, 3.0]], "float32")  # t = 3 -> T = 6, half-pixel centres
    # Target i samples the source at (i + 0.5) / 2 - 0.5, clamped at the ends.
    expected = np.interp((np.arange(6) + 0.5) / 2 - 0.5, np.arange(3), maps[0])
    np.testing.assert_allclose(to_numpy(resize_maps(maps, (6,)))[0], expected, atol=1e-6)
    volume = np.random.default_rng(1).random((2, 2, 3, 4)).astype("float32")
    up = to_numpy(resize_maps(volume, (4, 6, 8)))
    # Trilinear = linear along each axis in turn.
    axes = [np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1) for n in (2, 3, 4)]
    expected = volume
    for axis, points in enumerate(axes, start=1):
        expected = np.apply_along_axis(lambda v, p=points: np.interp(p, np.arange(len(v)), v), axis, expected)
    np.testing.assert_allclose(up, expected, atol=1e-5)
    with pytest.raises(ValueError, match="1-D grid; they cannot be resized to"):
        resize_maps(maps, (6, 6))


def test_maps_over_time_are_the_image_formulas_on_one_axis():
    rng = np.random.default_rng(2)
    a, g = rng.standard_normal((2, 5, 3)).astype("float32"), rng.standard_normal((2, 5, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(layercam(a, g)), (a * np.maximum(g, 0)).sum(-1), atol=1e-6)
    weights = g.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(to_numpy(gradcam(a, g)), np.maximum((weights * a).sum(-1), 0), atol=1e-6)


def test_fills_replace_the_masked_steps_only():
    x = np.arange(2 * 6 * 2, dtype="float32").reshape(2, 6, 2)
    mask = np.zeros((2, 6), bool)
    mask[:, 1:3] = True
    filled = to_numpy(apply_fill(x, mask, 0.5))
    np.testing.assert_array_equal(filled[mask], 0.5)
    np.testing.assert_array_equal(filled[~mask], x[~mask])
    noisy = to_numpy(apply_fill(x, mask, "noise", seed=0))
    assert (noisy[mask][:, 0] == noisy[mask][:, 1]).all()  # one value per step, every channel
    shuffled = to_numpy(apply_fill(x, mask, "shuffle", seed=0))
    for i in range(2):
        assert sorted(map(tuple, shuffled[i][mask[i]])) == sorted(map(tuple, x[i][mask[i]]))


# ---------------------------------------------------------------- models
def conv1d(steps=24, channels=2, classes=3):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((steps, channels)),
        keras.layers.Conv1D(8, 3, padding="same", activation="relu", name="c1"),
        keras.layers.MaxPooling1D(2, name="pool"),
        keras.layers.Conv1D(8, 3, padding="same", activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling1D(name="gap"),
        keras.layers.Dense(classes, name="logits"),
    ], name="conv1d")


def sequences(n=16, steps=24, channels=2, classes=3):
    rng = np.random.default_rng(0)
    return rng.random((n, steps, channels)).astype("float32"), rng.integers(0, classes, n)


def identity_sequence_model():
    """x -> 1x1 conv (w = 1) -> mean -> (+x, -x): LayerCAM of class 0 is x itself."""
    inputs = keras.Input((6, 1))
    feat = keras.layers.Conv1D(1, 1, use_bias=False, kernel_initializer="ones", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(feat)
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False, name="head")(pooled))
    model.get_layer("head").set_weights([np.array([[1.0, -1.0]], "float32")])
    return model


def test_exact_maps_and_masks_of_a_hand_built_sequence_model():
    x = np.array([[0.0, 0.2, 1.0, 0.6, 0.4, 0.1]], "float32")[..., None]
    maps = keras_gradmix.attribution_maps(identity_sequence_model(), x, [0], layer="feat")
    np.testing.assert_allclose(maps[0], x[0, :, 0], atol=1e-6)  # already in [0, 1]
    gm = GradMixModel(identity_sequence_model(), "feat", mask_area=(0.5, 0.5), fill=-1.0, seed=0)
    out = gm.preview(x, np.array([0]))
    # 3 steps around the peak (t = 2): [1, 4).
    np.testing.assert_array_equal(to_numpy(out.mask)[0], [False, True, True, True, False, False])
    np.testing.assert_allclose(to_numpy(out.images)[0, :, 0], [0.0, -1.0, -1.0, -1.0, 0.4, 0.1])


@pytest.mark.parametrize("jit", [False, True])
def test_a_conv1d_model_trains_saves_and_loads(jit, tmp_path):
    if jit and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True means torch.compile, not XLA")
    x, y = sequences()
    gm = GradMixModel(conv1d(), "c2", seed=0, mask_area=(0.25, 0.25))
    gm.compile("adam", sparse_ce(), jit_compile=jit)
    before = [to_numpy(w).copy() for w in gm.model.weights]
    history = gm.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["gradmix_masked"][-1] == 1.0
    assert history["gradmix_area"][-1] == pytest.approx(6 / 24)  # a 6-step span, shifted inside
    assert any(not np.allclose(a, to_numpy(b)) for a, b in zip(before, gm.model.weights))
    path = str(tmp_path / "gm.keras")
    gm.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layer == "c2" and loaded.options.mask_area == (0.25, 0.25)
    np.testing.assert_allclose(to_numpy(loaded.predict(x, verbose=0)), to_numpy(gm.predict(x, verbose=0)),
                               atol=1e-5)


def test_layer_none_picks_the_last_sequence_map_and_faithfulness_runs():
    x, y = sequences()
    model = conv1d()
    gm = GradMixModel(model, seed=0)
    gm.compile("adam", sparse_ce())
    gm.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert gm.layer == "c2"
    maps = keras_gradmix.attribution_maps(model, x[:4], y[:4])
    assert maps.shape == (4, 24) and maps.min() >= 0 and maps.max() <= 1
    with pytest.warns(UserWarning):  # an untrained model, few series
        result = keras_gradmix.faithfulness(model, x, y, layer="c2", area=0.25)
    assert result["per_image"]["peak"].shape == (16,)


def test_recurrent_and_attention_outputs_are_sequence_maps():
    x, y = sequences()
    inputs = keras.Input((24, 2))
    rnn = keras.layers.LSTM(8, return_sequences=True, name="rnn")(inputs)
    attended = keras.layers.MultiHeadAttention(2, 4, name="attention")(rnn, rnn)
    pooled = keras.layers.GlobalAveragePooling1D()(attended)
    model = keras.Model(inputs, keras.layers.Dense(3)(pooled))
    for layer in ("rnn", "attention"):
        gm = GradMixModel(model, layer, seed=0, mask="threshold", mask_area=(0.25, 0.25))
        gm.compile("adam", sparse_ce())
        history = gm.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert history["gradmix_area"][-1] == pytest.approx(6 / 24)


def test_outliers_and_partner_fills_over_time():
    x, y = sequences()
    for options in (dict(masked_as="outlier", auxiliary_positives=True), dict(fill="mix"),
                    dict(mode="replace", placement="random")):
        gm = GradMixModel(conv1d(), "c2", seed=0, **options)
        gm.compile("adam", sparse_ce())
        assert np.isfinite(gm.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][-1])


def test_a_conv3d_model_trains_with_three_dimensional_boxes():
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 8, 8, 8, 1)).astype("float32"), rng.integers(0, 2, 8)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 8, 1)),
                              keras.layers.Conv3D(4, 3, padding="same", activation="relu", name="c"),
                              keras.layers.GlobalAveragePooling3D(), keras.layers.Dense(2)])
    gm = GradMixModel(model, "c", seed=0, mask_area=(0.125, 0.125))
    gm.compile("adam", sparse_ce())
    assert gm.fit(x, y, batch_size=4, epochs=1, verbose=0).history["gradmix_area"][-1] == pytest.approx(0.125)
    out = gm.preview(x[:2], y[:2])
    mask = to_numpy(out.mask)
    assert mask.shape == (2, 8, 8, 8) and (mask.reshape(2, -1).sum(axis=1) == 64).all()
    for m in mask:  # one 4 x 4 x 4 box
        d, h, w = np.nonzero(m)
        assert (np.ptp(d), np.ptp(h), np.ptp(w)) == (3, 3, 3)


def test_a_layer_that_does_not_run_over_the_grid_is_named():
    x, y = sequences()
    with pytest.raises(ValueError, match=r"Layer 'gap' has output shape .*for sequences a \(batch, steps.* layers with a map: \['c1', 'pool', 'c2'\]"):
        GradMixModel(conv1d(), "gap")
    attributor = Attributor(conv1d(), ["c2"])
    assert attributor(x[:2], y[:2]).shape == (2, 24)
    # A 4-D output inside a sequence model: no map over the input's steps.
    model = keras.Sequential([keras.Input((24, 2)), keras.layers.Reshape((24, 2, 1), name="grid"),
                              keras.layers.Conv2D(2, 1, name="c"), keras.layers.Reshape((24, 4)),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"Layer 'c' returned \(2, 24, 2, 2\); GradMix needs one "
                                         r"\(batch, steps, channels\) sequence output"):
        Attributor(model, "c")(x[:2], y[:2])


def test_the_first_batch_look_checks_series_as_it_checks_images():
    x = np.random.default_rng(0).standard_normal((8, 24, 2)).astype("float32")  # standardised
    gm = GradMixModel(conv1d(), "c2")
    gm.compile("adam", sparse_ce())
    with pytest.raises(ValueError, match=r"span \[-\d\.\d+, \d\.\d+\] but value_range is \(0, 1\).*"
                                         r"pass value_range=\(-\d\.\d+, \d\.\d+\)"):
        gm.fit(x, np.zeros(8, "int32"), verbose=0)
    for trained, initial in zip(gm.model.weights, conv1d().weights):  # nothing trained
        np.testing.assert_array_equal(to_numpy(trained), to_numpy(initial))
