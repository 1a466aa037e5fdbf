"""The fitted scores against brute-force transcriptions of their papers, the
decision helpers against brute force, and one fit per evaluation."""

import json

import numpy as np
import osr_reference as ref
import pytest

from keras_gradmix.osr import (
    OpenSetClassifier,
    ccr_at_fpr,
    fit_threshold,
    gen,
    make_scorer,
    open_set_predict,
)
from keras_gradmix.osr.scorers import Scorer

pytestmark = pytest.mark.backend_free  # no backend involved: one pass of `make test`


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    train = np.maximum(rng.normal(size=(80, 12)), 0)  # post-ReLU features
    labels = rng.integers(0, 3, 80)
    test = np.maximum(rng.normal(0.3, 1.2, size=(9, 12)), 0)
    w, b = rng.normal(size=(12, 3)), rng.normal(size=3)
    return train, labels, test, w, b


def test_knn_is_minus_the_kth_nearest_normalised_distance(data):
    train, labels, test, _, _ = data
    got = make_scorer("knn", k=5).fit(train)(test)
    np.testing.assert_allclose(got, [ref.knn_sun(f, train, 5) for f in test], rtol=1e-9)
    assert make_scorer("knn").k == 50  # the paper's default


@pytest.mark.parametrize("percentile", [90.0, 70.0])
def test_react_clips_at_the_training_percentile(data, percentile):
    train, labels, test, w, b = data
    got = make_scorer("react", percentile=percentile).fit(train, labels, (w, b))(test)
    np.testing.assert_allclose(got, [ref.react(f, train, w, b, percentile) for f in test], rtol=1e-9)


@pytest.mark.parametrize("percentile", [90.0, 65.0])
def test_ash_s_prunes_and_scales_each_sample(data, percentile):
    train, labels, test, w, b = data
    got = make_scorer("ash", percentile=percentile).fit(train, labels, (w, b))(test)
    np.testing.assert_allclose(got, [ref.ash_s(f, w, b, percentile) for f in test], rtol=1e-9)


def test_scale_scales_without_pruning(data):
    train, labels, test, w, b = data
    got = make_scorer("scale").fit(train, labels, (w, b))(test)
    np.testing.assert_allclose(got, [ref.scale(f, w, b, 85.0) for f in test], rtol=1e-9)


def test_vim_is_energy_minus_the_scaled_residual(data):
    train, labels, test, w, b = data
    got = make_scorer("vim", dim=5).fit(train, labels, (w, b))(test)
    np.testing.assert_allclose(got, [ref.vim(f, train, w, b, 5) for f in test], rtol=1e-7)


@pytest.mark.parametrize("gamma,m", [(0.1, 100), (0.5, 2)])
def test_gen_is_minus_the_generalised_entropy_of_the_top_m(gamma, m):
    logits = np.random.default_rng(1).normal(size=(6, 5)) * 3
    np.testing.assert_allclose(gen(logits, gamma, m), [ref.gen(z, gamma, m) for z in logits])


def test_a_head_score_without_a_head_and_an_unfitted_scorer_are_named(data):
    train, labels, test, _, _ = data
    with pytest.raises(ValueError, match="'react' score recomputes logits .* needs the classifier head"):
        make_scorer("react").fit(train, labels)
    with pytest.raises(ValueError, match="Fit the 'knn' scorer first"):
        make_scorer("knn")(test)
    with pytest.raises(ValueError, match="Unknown fitted score 'nope'"):
        make_scorer("nope")


# ------------------------------------------------------------------ decisions
def test_fit_threshold_is_the_largest_accepting_the_recall():
    scores = np.random.default_rng(2).normal(size=101)
    for recall in (0.5, 0.9, 0.95, 1.0):
        t = fit_threshold(scores, recall)
        brute = max(s for s in scores if np.mean(scores >= s) >= recall)
        assert t == brute


def test_ccr_at_fpr_against_brute_force():
    rng = np.random.default_rng(3)
    known, unknown = rng.normal(1, 1, 200), rng.normal(0, 1, 150)
    correct = rng.random(200) < 0.8
    got = ccr_at_fpr(known, unknown, correct, (0.01, 0.05, 0.1, 0.5))
    for fpr, ccr in got.items():
        candidates = [t for t in np.r_[unknown, -np.inf] if np.mean(unknown > t) <= fpr]
        t = min(candidates)  # the lowest threshold that accepts at most fpr of unknowns
        assert ccr == pytest.approx(np.mean(correct & (known > t)))


def test_open_set_predict():
    np.testing.assert_array_equal(
        open_set_predict([0.2, 0.9, 0.5], [3, 1, 2], threshold=0.5), [-1, 1, 2])


def test_each_scorer_is_fitted_once_per_evaluation(monkeypatch):
    import keras

    from keras_gradmix.osr import evaluate_ood

    fits = []
    original = Scorer.fit
    monkeypatch.setattr(Scorer, "fit", lambda self, *a, **k: fits.append(self.name) or original(self, *a, **k))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "relu", name="hidden"),
                              keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(60, 4)).astype("float32"), rng.integers(0, 3, 60))
    sets = {f"set{i}": rng.normal(i, 1, (20, 4)).astype("float32") for i in range(3)}
    evaluate_ood(model, train[0][:30], sets, feature_layer="hidden", train_data=train)
    assert sorted(fits) == sorted(["knn", "mahalanobis", "react", "ash", "scale", "vim"])


def test_the_open_set_classifier_fits_predicts_and_round_trips(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "relu", name="hidden"),
                              keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(60, 4)).astype("float32"), rng.integers(0, 3, 60))
    held_out = (rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40))
    unknown = rng.normal(3, 1, (30, 4)).astype("float32")
    for score in ("mls", "vim"):
        clf = OpenSetClassifier(score, recall=0.9, feature_layer="hidden").fit(model, held_out, train)
        predicted = clf.predict(model, held_out[0])
        assert np.mean(predicted != -1) >= 0.9  # the target recall, on the data it was fitted on
        clf.save(tmp_path / f"{score}.json")
        again = OpenSetClassifier.load(tmp_path / f"{score}.json")
        np.testing.assert_array_equal(again.predict(model, unknown), clf.predict(model, unknown))
        report = clf.evaluate(model, held_out, unknown)
        assert report["known_recall"] >= 0.9 and set(report) >= {"ccr_fpr1", "ccr_fpr5", "ccr_fpr10"}
    assert json.loads((tmp_path / "mls.json").read_text())["threshold"] == clf_threshold(model, held_out)


def clf_threshold(model, held_out):
    logits = model.predict(held_out[0], verbose=0)
    return fit_threshold(logits.max(axis=1), 0.9)


@pytest.mark.parametrize("name", ["knn", "knn_relative", "mahalanobis", "react", "ash", "scale", "vim"])
def test_every_scorer_round_trips_its_explicit_state_through_json(data, name):
    train, labels, test, w, b = data
    fitted = make_scorer(name).fit(train, labels, (w, b))
    state = json.loads(json.dumps({k: v.tolist() for k, v in fitted.get_state().items()}))
    assert set(state) == set(fitted.state) | {"head_kernel", "head_bias"}  # the head: always given here
    restored = make_scorer(name).set_state(state)
    np.testing.assert_array_equal(restored(test), fitted(test))
    with pytest.raises(ValueError, match="before saving its state"):
        make_scorer(name).get_state()
    if fitted.state:
        with pytest.raises(ValueError, match=f"lacks \\['{sorted(fitted.state)[0]}'\\]"):
            make_scorer(name).set_state({k: v for k, v in state.items() if k != sorted(fitted.state)[0]})


# ------------------------------------------ rmds, she, fdbd, klm (OpenOOD's)
def test_rmds_is_class_minus_background_mahalanobis(data):
    train, labels, test, _, _ = data
    got = make_scorer("rmds").fit(train, labels)(test)
    np.testing.assert_allclose(got, [ref.rmds(f, train, labels) for f in test], rtol=1e-6)


def test_she_is_the_inner_product_with_the_predicted_class_pattern(data):
    train, _, test, w, b = data
    labels = (train @ w + b).argmax(axis=1)
    labels[::4] = (labels[::4] + 1) % 3  # a quarter misclassified: left out of the patterns
    got = make_scorer("she").fit(train, labels, (w, b))(test)
    np.testing.assert_allclose(got, [ref.she(f, train, labels, w, b) for f in test], rtol=1e-9)
    # A class the head never gets right: the mean of all its features (OpenOOD: NaN).
    labels = (train @ w + b).argmax(axis=1)
    wrong = labels == 0
    labels[wrong] = 1
    labels[~wrong & (labels == 1)] = 0
    patterns = make_scorer("she").fit(train, labels, (w, b)).patterns
    np.testing.assert_allclose(patterns[0], train[labels == 0].mean(axis=0))


def test_fdbd_is_the_mean_boundary_distance_over_the_distance_to_the_mean(data):
    train, labels, test, w, b = data
    got = make_scorer("fdbd").fit(train, labels, (w, b))(test)
    np.testing.assert_allclose(got, [ref.fdbd(f, train, w, b) for f in test], rtol=1e-9)


def test_klm_is_minus_the_smallest_kl_to_a_class_template(data):
    rng = np.random.default_rng(4)
    train_logits = rng.normal(size=(60, 4)) * 2
    train_logits[:, 3] -= 10  # class 3 is never predicted: its template is one-hot
    test = rng.normal(size=(7, 4)) * 2
    scorer = make_scorer("klm").fit(train_logits)
    np.testing.assert_allclose(scorer.templates[3], [0, 0, 0, 1])
    np.testing.assert_allclose(scorer(test), [ref.klm(z, train_logits) for z in test], rtol=1e-7)
    restored = make_scorer("klm").set_state(scorer.get_state())  # logits in, no head
    np.testing.assert_array_equal(restored(test), scorer(test))


@pytest.mark.parametrize("name", ["rmds", "she", "fdbd"])
def test_new_scores_save_and_restore(data, name):
    train, labels, test, w, b = data
    scorer = make_scorer(name).fit(train, labels, (w, b))
    restored = make_scorer(name).set_state(scorer.get_state())
    np.testing.assert_array_equal(restored(test), scorer(test))
