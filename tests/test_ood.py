"""evaluate_ood and the synthetic OOD sets, against independent NumPy computations."""

import keras
import numpy as np
import pytest

from keras_gradmix.data import load_arrays, permuted_pixels, uniform_noise
import osr_reference as ref

from keras_gradmix.osr import evaluate_ood, evaluate_open_set, mahalanobis


def mlp(seed=0):
    """4 inputs -> Dense(6, relu) 'hidden' -> Dense(3) logits, random weights."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, "relu", name="hidden"),
                             keras.layers.Dense(3, name="logits")])


def numpy_forward(model, x):
    (w1, b1), (w2, b2) = [[np.asarray(v, np.float64) for v in layer.get_weights()]
                          for layer in model.layers]
    hidden = np.maximum(x @ w1 + b1, 0)
    return hidden, hidden @ w2 + b2


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    return {
        "train": (rng.normal(size=(60, 4)).astype("float32"), rng.integers(0, 3, 60)),
        "in": rng.normal(size=(40, 4)).astype("float32"),
        "ood": {"far": rng.normal(3.0, 1.0, (30, 4)).astype("float32"),
                "near": rng.normal(0.5, 1.0, (25, 4)).astype("float32")},
    }


def test_every_row_equals_the_metrics_of_numpy_scores(sets):
    model = mlp()
    rows = evaluate_ood(model, sets["in"], sets["ood"], feature_layer="hidden",
                        train_data=sets["train"], temperature=2.0,
                        score_options={"knn": {"k": 7}, "vim": {"dim": 3}})
    names = ["msp", "mls", "energy", "entropy", "gen", "knn", "mahalanobis", "react", "ash",
             "scale", "vim"]
    assert [(r["ood"], r["score"]) for r in rows] == [(o, s) for o in ("far", "near") for s in names]
    train_hidden, _ = numpy_forward(model, sets["train"][0].astype(np.float64))
    w, b = (keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.layers[-1].weights)
    for row in rows:
        def score(x):
            hidden, z = numpy_forward(model, x.astype(np.float64))
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            per_sample = {
                "gen": lambda i: ref.gen(z[i], 0.1, 100),
                "knn": lambda i: ref.knn_sun(hidden[i], train_hidden, 7),
                "react": lambda i: ref.react(hidden[i], train_hidden, w, b, 90.0),
                "ash": lambda i: ref.ash_s(hidden[i], w, b, 90.0),
                "scale": lambda i: ref.scale(hidden[i], w, b, 85.0),
                "vim": lambda i: ref.vim(hidden[i], train_hidden, w, b, 3),
            }
            if row["score"] in per_sample:
                return np.array([per_sample[row["score"]](i) for i in range(len(x))])
            return {
                "msp": p.max(1),
                "mls": z.max(1),
                "energy": 2.0 * np.log(np.exp(z / 2.0).sum(1)),
                "entropy": np.sum(p * np.log(p), axis=1),
                "mahalanobis": mahalanobis(hidden, train_hidden, sets["train"][1]),
            }[row["score"]]

        expected = evaluate_open_set(score(sets["in"]), score(sets["ood"][row["ood"]]))
        assert set(row) == {"group", "ood", "score", "auroc", "aupr_in", "aupr_out", "fpr95"}
        for metric, value in expected.items():
            assert row[metric] == pytest.approx(value, abs=1e-6), (row["ood"], row["score"], metric)


def test_groups_report_each_set_and_each_group_mean(sets):
    model = mlp()
    extra = np.random.default_rng(5).normal(4.0, 1.0, (20, 4)).astype("float32")
    groups = {"near": {"near": sets["ood"]["near"]}, "far": {"far": sets["ood"]["far"], "farther": extra}}
    rows = evaluate_ood(model, sets["in"], groups, ["mls", "energy"])
    assert [(r["group"], r["ood"]) for r in rows if r["score"] == "mls"] == [
        ("near", "near"), ("near", "near (mean)"), ("far", "far"), ("far", "farther"),
        ("far", "far (mean)")]
    by = {(r["ood"], r["score"]): r for r in rows}
    for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        assert by["far (mean)", "energy"][metric] == pytest.approx(
            (by["far", "energy"][metric] + by["farther", "energy"][metric]) / 2)
    flat = evaluate_ood(model, sets["in"], {"far": sets["ood"]["far"]}, ["mls"])
    assert flat[0]["auroc"] == by["far", "mls"]["auroc"] and flat[0]["group"] == ""
    with pytest.raises(ValueError, match="mixes groups"):
        evaluate_ood(model, sets["in"], {"near": {"a": extra}, "b": extra}, ["mls"])


def test_default_scores_and_inputs_in_any_form(sets):
    import tensorflow as tf

    model = mlp()
    logits_only = evaluate_ood(model, sets["in"], {"far": sets["ood"]["far"]})
    assert [r["score"] for r in logits_only] == ["msp", "mls", "energy", "entropy", "gen"]
    labels = np.zeros(len(sets["in"]), "int64")
    as_dataset = evaluate_ood(
        model, tf.data.Dataset.from_tensor_slices((sets["in"], labels)).batch(7),
        {"far": tf.data.Dataset.from_tensor_slices(sets["ood"]["far"]).batch(8)})
    assert [(r["ood"], r["score"]) for r in as_dataset] == [
        (r["ood"], r["score"]) for r in logits_only]
    assert [r["auroc"] for r in as_dataset] == pytest.approx([r["auroc"] for r in logits_only])


def test_far_ood_is_detected_better_than_near_ood(sets):
    x, y = sets["train"]
    model = mlp()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5, verbose=0)
    rows = {(r["ood"], r["score"]): r for r in evaluate_ood(
        model, sets["in"], sets["ood"], ["mahalanobis"], feature_layer="hidden",
        train_data=sets["train"])}
    assert rows["far", "mahalanobis"]["auroc"] > rows["near", "mahalanobis"]["auroc"]


def test_bad_input_is_named(sets):
    model = mlp()
    with pytest.raises(ValueError, match=r"ood_data must be a non-empty dict \{name: data\}"):
        evaluate_ood(model, sets["in"], sets["ood"]["far"])
    with pytest.raises(ValueError, match="ood_data must be a non-empty dict"):
        evaluate_ood(model, sets["in"], {})
    with pytest.raises(ValueError, match="pass feature_layer="):
        evaluate_ood(model, sets["in"], sets["ood"], ["knn"])
    with pytest.raises(ValueError, match="Unknown open-set scores"):
        evaluate_ood(model, sets["in"], sets["ood"], ["nope"])


def test_uniform_noise():
    x = uniform_noise(50, (28, 28, 1), seed=3)
    assert x.shape == (50, 28, 28, 1) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() < 1 and abs(x.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(x, uniform_noise(50, (28, 28, 1), seed=3))
    assert not np.array_equal(x, uniform_noise(50, (28, 28, 1), seed=4))


def test_permuted_pixels_keeps_each_histogram_and_shares_the_channel_permutation(mnist):
    grey = mnist[0][:20]
    shuffled = permuted_pixels(grey, seed=1)
    assert shuffled.shape == grey.shape
    for a, b in zip(grey, shuffled):
        np.testing.assert_array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
        assert not np.array_equal(a, b)
    np.testing.assert_array_equal(shuffled, permuted_pixels(grey, seed=1))
    rgb = np.concatenate([grey, 0.5 * grey, 1 - grey], axis=-1)  # channels tied pixel by pixel
    out = permuted_pixels(rgb, seed=1)
    np.testing.assert_array_equal(out[..., :1], shuffled)
    np.testing.assert_allclose(out[..., 1:2], 0.5 * out[..., :1])
    np.testing.assert_allclose(out[..., 2:], 1 - out[..., :1])
    np.testing.assert_array_equal(permuted_pixels(grey[..., 0], seed=1), shuffled[..., 0])
    with pytest.raises(ValueError, match=r"\(N, H, W\[, C\]\) images"):
        permuted_pixels(grey[0, :, :, 0])


def test_load_arrays():
    digits = load_arrays("mnist5k")
    assert digits["x_train"].shape == (4000, 28, 28) and digits["x_test"].shape == (1000, 28, 28)
    assert digits["x_train"].dtype == np.uint8
    with pytest.raises(ValueError, match="load_arrays knows 'fashion_mnist' and 'mnist5k'"):
        load_arrays("cifar10")


@pytest.mark.parametrize("temperature, noise", [(1000.0, 0.0014), (1.0, 0.05)])
def test_odin_moves_the_input_and_scales_the_softmax(temperature, noise):
    keras.utils.set_random_seed(1)
    linear = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="logits")])
    w, b = (np.asarray(v, np.float64) for v in linear.layers[-1].get_weights())
    x = np.random.default_rng(2).normal(size=(9, 4)).astype("float32")
    from keras_gradmix.osr.odin import odin

    got = odin(linear, x, temperature, noise)
    want = [ref.odin_linear(v.astype(np.float64), w, b, temperature, noise) for v in x]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        odin(linear, x, temperature=0.0)


def test_odin_and_klm_through_evaluate_ood(sets):
    model = mlp()
    rows = evaluate_ood(model, sets["in"], sets["ood"], scores=("odin", "klm"),
                        train_data=sets["train"], score_options={"odin": {"noise": 0.0}})
    _, train_logits = numpy_forward(model, sets["train"][0].astype(np.float64))
    for row in rows:
        def score(x):
            _, z = numpy_forward(model, x.astype(np.float64))
            if row["score"] == "klm":
                return np.array([ref.klm(v, train_logits) for v in z])
            return np.array([ref.softmax(v / 1000.0).max() for v in z])  # no step: T only

        want = evaluate_open_set(score(sets["in"]), score(sets["ood"][row["ood"]]))
        assert row["auroc"] == pytest.approx(want["auroc"], abs=1e-9), row
    with pytest.raises(ValueError, match=r"\['klm'\] are fitted on the training data"):
        evaluate_ood(model, sets["in"], sets["ood"], scores=("klm",))
