"""GradMix on token ids (B, T) and KerasHub text inputs: padding is never masked."""

import keras
import numpy as np
import pytest
from conftest import sparse_ce, to_numpy

import keras_gradmix
from keras_gradmix import GradMixModel, threshold_masks
from keras_gradmix.masks import place_masks, placement_scores, spans_within
from keras_gradmix.mixing import apply_fill
from keras_gradmix.token_ids import valid_positions

FALSE, TRUE = False, True


# ----------------------------------------------------------------- maths
def test_spans_cover_the_share_of_real_tokens_and_never_padding():
    maps = np.zeros((3, 8), "float32")
    valid = np.zeros((3, 8), bool)
    valid[0, :5] = True  # right-padded, 5 tokens, peak on the last token
    maps[0, 4] = 1.0
    valid[1, 3:] = True  # left-padded, 5 tokens, peak on the first token
    maps[1, 3] = 1.0
    valid[2, 1:7] = True  # [CLS] (highest map) and [SEP] unselectable, 6 tokens
    maps[2, 0], maps[2, 6] = 1.0, 0.5
    mask, share = spans_within(maps, 0.4, valid)  # round(0.4 n) = 2 tokens each
    expected = np.zeros((3, 8), bool)
    expected[0, 3:5] = expected[1, 3:5] = expected[2, 5:7] = True  # shifted inside the tokens
    np.testing.assert_array_equal(to_numpy(mask), expected)
    np.testing.assert_allclose(to_numpy(share), [2 / 5, 2 / 5, 2 / 6], rtol=1e-6)
    clipped, share = place_masks("box", maps, 0.4, border="clip", valid=valid)
    expected[1, 4] = False  # [t - 1, t + 1) cut at the first token
    np.testing.assert_array_equal(to_numpy(clipped), expected)
    np.testing.assert_allclose(to_numpy(share), [2 / 5, 1 / 5, 2 / 6], rtol=1e-6)


def test_threshold_and_low_masks_take_real_tokens_only():
    maps = np.array([[0.9, 0.1, 0.5, 0.7, 0.0, 0.0],
                     [1.0, 0.6, 0.2, 0.8, 0.3, 0.0]], "float32")
    valid = np.array([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], bool)
    mask, share = threshold_masks(maps, 0.5, valid)  # floor(0.5 n + 0.5): 2 of 4, 3 of 5
    np.testing.assert_array_equal(to_numpy(mask), [[1, 0, 0, 1, 0, 0], [0, 1, 0, 1, 1, 0]])
    np.testing.assert_allclose(to_numpy(share), [2 / 4, 3 / 5], rtol=1e-6)
    draw = np.full(maps.shape, 0.5, "float32")
    low = placement_scores(maps, "low", draw, valid)  # the padding's 0 is not a minimum
    mask, _ = place_masks("box", low, 0.25, valid=valid)
    np.testing.assert_array_equal(to_numpy(mask), [[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])


def test_a_random_place_never_lands_on_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 17, 256)
    valid = np.arange(16)[None] < lengths[:, None]
    draw = rng.random((256, 16)).astype("float32")
    for kind in ("box", "threshold"):
        mask, share = place_masks(kind, placement_scores(draw, "random", draw), 0.3, valid=valid)
        mask = to_numpy(mask)
        assert not (mask & ~valid).any()
        np.testing.assert_array_equal(mask.sum(axis=1), np.floor(0.3 * lengths + 0.5))
        np.testing.assert_allclose(to_numpy(share), np.floor(0.3 * lengths + 0.5) / lengths, rtol=1e-6)


def test_token_ids_are_replaced_by_an_id_and_stay_integers():
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 0]], "int32")
    mask = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], bool)
    out = to_numpy(apply_fill(ids, mask, 103))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[5, 103, 103, 8], [103, 103, 11, 0]])
    shuffled = to_numpy(apply_fill(ids, mask, "shuffle", seed=0))
    np.testing.assert_array_equal(np.sort(shuffled, axis=1), np.sort(ids, axis=1))
    np.testing.assert_array_equal(shuffled[~mask], ids[~mask])
    with pytest.raises(ValueError, match="Token ids take a constant id or 'shuffle'"):
        apply_fill(ids, mask, "noise")


def test_valid_positions_read_the_padding_mask_and_unselectable_ids():
    ids = np.array([[2, 7, 8, 3, 0, 0]], "int32")
    np.testing.assert_array_equal(to_numpy(valid_positions(ids)), [[1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(to_numpy(valid_positions(ids, (0, 2, 3))), [[0, 1, 1, 0, 0, 0]])
    x = {"token_ids": ids, "padding_mask": np.array([[1, 1, 1, 1, 1, 0]], bool)}
    np.testing.assert_array_equal(to_numpy(valid_positions(x, ())), [[1, 1, 1, 1, 1, 0]])


# ---------------------------------------------------------------- models
VOCABULARY = 12


def id_model(steps=6):
    """ids -> embedding e(v) = v / 10 -> mean -> (+, -): LayerCAM of class 0
    at the embedding is each token's own e(v)."""
    inputs = keras.Input((steps,), dtype="int32")
    table = keras.initializers.Constant(np.arange(VOCABULARY, dtype="float32")[:, None] / 10)
    embedded = keras.layers.Embedding(VOCABULARY, 1, embeddings_initializer=table, name="embed")(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    head = keras.layers.Dense(2, use_bias=False, kernel_initializer=keras.initializers.Constant([[1.0, -1.0]]))
    return keras.Model(inputs, head(pooled))


def text_batch(n=16, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCABULARY, (n, steps)).astype("int32")
    lengths = rng.integers(3, steps + 1, n)
    ids[np.arange(steps)[None] >= lengths[:, None]] = 0
    return ids, rng.integers(0, 2, n), lengths


def test_exact_maps_and_masks_of_a_hand_built_text_model():
    ids = np.array([[3, 9, 5, 4, 0, 0], [2, 6, 11, 7, 8, 5]], "int32")
    maps = keras_gradmix.attribution_maps(id_model(), ids, [0, 0], layer="embed")
    e = ids / 10.0
    np.testing.assert_allclose(maps, (e - e.min(1, keepdims=True)) / np.ptp(e, 1, keepdims=True), atol=1e-5)
    gm = GradMixModel(id_model(), "embed", mask_area=(0.5, 0.5), fill=1, seed=0,
                      unselectable_token_ids=(0, 2))
    out = gm.preview(ids, np.array([0, 0]))
    # Row 0: 4 tokens, 2 around the peak (9 at t = 1): [0, 2). Row 1: 5 tokens
    # (t = 1..5, the 2 is unselectable), round(2.5 + 0.5) = 3 around 11 at t = 2: [1, 4).
    np.testing.assert_array_equal(to_numpy(out.mask), [[1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(to_numpy(out.images), [[1, 1, 5, 4, 0, 0], [2, 1, 1, 1, 8, 5]])
    assert to_numpy(out.images).dtype == np.int32


def test_faithfulness_blanks_spans_of_real_tokens():
    ids = np.array([[3, 9, 5, 4, 0, 0], [2, 6, 11, 7, 8, 5]], "int32")
    with pytest.warns(UserWarning):  # two sequences: no interval worth the name
        result = keras_gradmix.faithfulness(id_model(), ids, [0, 0], layer="embed", area=0.5)

    def p0(kept):  # logits (m, -m), m the mean embedding over the 6 places
        return 1.0 / (1.0 + np.exp(-2.0 * sum(kept) / 60.0))

    # At the peak: 2 of 4 tokens around the 9 (t = 0, 1), 3 of 6 around the 11 (t = 1..3), set to id 0.
    expected = [p0([3, 9, 5, 4]) - p0([5, 4]), p0([2, 6, 11, 7, 8, 5]) - p0([2, 8, 5])]
    np.testing.assert_allclose(result["per_image"]["peak"], expected, rtol=1e-5)


def conv_text_model(steps=10, classes=2):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((steps,), dtype="int32"),
        keras.layers.Embedding(VOCABULARY, 8, name="embed"),
        keras.layers.Conv1D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(classes),
    ], name="text")


@pytest.mark.parametrize("jit", [False, True])
def test_a_text_model_trains_saves_and_loads(jit, tmp_path):
    if jit and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True means torch.compile, not XLA")
    ids, y, lengths = text_batch()
    gm = GradMixModel(conv_text_model(), seed=0, fill=1, mask_area=(0.5, 0.5), mask="threshold")
    gm.compile("adam", sparse_ce(), jit_compile=jit)
    before = [to_numpy(w).copy() for w in gm.model.weights]
    history = gm.fit(ids, y, batch_size=16, epochs=1, verbose=0).history
    assert gm.layer == "conv"
    share = np.floor(0.5 * lengths + 0.5) / lengths  # of each sequence's tokens
    assert history["gradmix_area"][-1] == pytest.approx(share.mean(), rel=1e-5)
    assert any(not np.allclose(a, to_numpy(b)) for a, b in zip(before, gm.model.weights))
    out = gm.preview(ids, y)
    mask = to_numpy(out.mask)
    assert not (mask & (ids == 0)).any()
    np.testing.assert_array_equal(to_numpy(out.images), np.where(mask, 1, ids))
    path = str(tmp_path / "gm.keras")
    gm.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.options.unselectable_token_ids == (0,) and loaded.options.fill == 1.0
    np.testing.assert_allclose(to_numpy(loaded.predict(ids, verbose=0)),
                               to_numpy(gm.predict(ids, verbose=0)), atol=1e-5)


def dict_model(steps=10):
    """KerasHub's input convention: ``token_ids`` and ``padding_mask``."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((steps,), dtype="int32", name="token_ids")
    padding = keras.Input((steps,), dtype="bool", name="padding_mask")
    embedded = keras.layers.Embedding(VOCABULARY, 8, name="embed")(ids)
    conv = keras.layers.Conv1D(8, 3, padding="same", activation="relu", name="conv")(embedded)
    pooled = keras.layers.GlobalAveragePooling1D()(conv, mask=padding)
    return keras.Model({"token_ids": ids, "padding_mask": padding}, keras.layers.Dense(2)(pooled))


def test_dict_inputs_outliers_and_auxiliary_positives_keep_off_the_padding():
    ids, y, lengths = text_batch()
    ids[ids == 0] = 5  # padding that is not id 0: only the padding mask says so
    padding = np.arange(10)[None] < lengths[:, None]
    x = {"token_ids": ids, "padding_mask": padding}
    gm = GradMixModel(dict_model(), "conv", seed=0, fill="shuffle", masked_as="outlier",
                      auxiliary_positives=True, mask_area=(0.3, 0.3))
    gm.compile("adam", sparse_ce())
    history = gm.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["gradmix_area"][-1] == pytest.approx((np.floor(0.3 * lengths + 0.5) / lengths).mean(),
                                                        rel=1e-5)
    out = gm.preview(x, y)
    assert set(out.images) == {"token_ids", "padding_mask"}
    np.testing.assert_array_equal(to_numpy(out.images["padding_mask"]), np.concatenate([padding] * 2))
    moved = to_numpy(out.images["token_ids"]) != np.concatenate([ids] * 2)
    assert not (moved & ~np.concatenate([padding] * 2)).any()
    assert not (to_numpy(out.mask) & ~padding).any()


def test_a_keras_hub_text_classifier_trains_with_gradmix():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(vocabulary_size=VOCABULARY, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16, max_sequence_length=10)
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    ids, y, lengths = text_batch()
    ids[:, 0] = 1  # [CLS]
    x = {"token_ids": ids, "padding_mask": ids != 0, "segment_ids": np.zeros_like(ids)}
    gm = GradMixModel(classifier, "bert_backbone/embeddings_layer_norm", seed=0, fill=4,
                      unselectable_token_ids=(0, 1), mask_area=(0.3, 0.3))
    gm.compile("adam", sparse_ce())
    history = gm.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["gradmix_masked"][-1] > 0.5 and np.isfinite(history["loss"][-1])
    out = gm.preview(x, y)
    mask, applied = to_numpy(out.mask), to_numpy(out.applied)
    # A sequence whose map is flat off [CLS] (an untrained model's) is left as it is.
    np.testing.assert_array_equal(mask.sum(axis=1), applied * np.floor(0.3 * (lengths - 1) + 0.5))
    assert applied.any() and not mask[:, 0].any() and not (mask & (ids == 0)).any()
    np.testing.assert_array_equal(to_numpy(out.images["token_ids"]), np.where(mask, 4, ids))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("options,message", [
    (dict(), r"fill='noise' draws pixel values; token ids are replaced by an id: pass fill=<id>"),
    (dict(fill="mix"), r"fill='mix' pastes a partner's tokens"),
    (dict(fill=1.5), r"fill=1.5 is not a token id"),
    (dict(fill=1, policy={"gradmix": 0.5, "cutmix": 0.5}), r"token ids take policy=None"),
])
def test_options_without_meaning_for_token_ids_are_named_at_the_first_batch(options, message):
    ids, y, _ = text_batch()
    gm = GradMixModel(conv_text_model(), "conv", **options)
    gm.compile("adam", sparse_ce())
    with pytest.raises(ValueError, match=message):
        gm.fit(ids, y, epochs=1, verbose=0)


def test_bad_token_inputs_are_named():
    with pytest.raises(ValueError, match=r"unselectable_token_ids must be a list of token ids >= 0"):
        GradMixModel(conv_text_model(), "conv", unselectable_token_ids=(-1,))
    ids, y, _ = text_batch()
    gm = GradMixModel(conv_text_model(), "conv", fill=1)
    gm.compile("adam", sparse_ce())
    with pytest.raises(ValueError, match=r"negative token ids \(down to -3\)"):
        gm.fit(np.where(ids == 0, -3, ids), y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"got shape \(16, 10\); token ids \(batch, tokens\) must be integers"):
        gm.fit(ids.astype("float32"), y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"a dict of them needs a 'token_ids' entry\); got dict of \['ids'\]"):
        gm.fit({"ids": ids}, y, epochs=1, verbose=0)
