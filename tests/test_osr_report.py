"""The OSR report's additions: per-class breakdown, calibration by score,
full-spectrum rows and validation-tuned hyper-parameters, against direct
NumPy computations."""

import warnings

import keras
import numpy as np
import pytest
import osr_reference as ref
from sklearn.metrics import roc_auc_score

from keras_gradmix.corruptions import corrupt
from keras_gradmix.osr import (
    calibration,
    evaluate_full_spectrum,
    evaluate_open_set,
    open_set_scores,
    per_class_metrics,
    calibration_by_score,
    tune_scores,
    tuned_options,
)
from test_ood import mlp, numpy_forward


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return {
        "train": (rng.normal(size=(60, 4)).astype("float32"), rng.integers(0, 3, 60)),
        "known": (rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)),
        "unknown": (rng.normal(1.0, 1.5, (30, 4)).astype("float32"), rng.choice([5, 7], 30)),
    }


def test_per_class_breakdown_and_calibration_by_score(data):
    model = mlp()
    raw = open_set_scores(model, data["known"], data["unknown"], ("msp", "mls"))
    _, z = numpy_forward(model, data["known"][0].astype(np.float64))
    _, z_unknown = numpy_forward(model, data["unknown"][0].astype(np.float64))
    y, y_unknown = data["known"][1], data["unknown"][1]
    table = per_class_metrics(raw, "mls")
    assert table["accuracy"] == pytest.approx({c: np.mean(z[y == c].argmax(1) == c) for c in (0, 1, 2)})
    labels = lambda c: np.r_[np.ones(len(z)), np.zeros(np.sum(y_unknown == c))]  # noqa: E731
    assert table["auroc"] == pytest.approx({c: roc_auc_score(labels(c), np.r_[
        z.max(1), z_unknown[y_unknown == c].max(1)]) for c in (5, 7)})
    report = calibration_by_score(raw, bins=10)
    msp = np.array([ref.softmax(v).max() for v in z])
    correct = z.argmax(1) == y
    assert report["ece"] == pytest.approx(calibration.ece(msp, correct, 10))
    assert report["aurc"]["msp"] == pytest.approx(calibration.aurc(msp, correct))
    assert report["aurc"]["mls"] == pytest.approx(calibration.aurc(z.max(1), correct))


def small_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])


def test_full_spectrum_counts_corrupted_known_images_as_known():
    rng = np.random.default_rng(1)
    x, y = rng.random((20, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 20)
    x_unknown = rng.random((15, 8, 8, 1), dtype=np.float32) ** 3
    model = small_cnn()
    result = evaluate_full_spectrum(model, (x, y), x_unknown, ("msp",),
                                    corruptions=("gaussian_noise", "contrast"), severities=(2,),
                                    batch_size=8)
    logits = lambda images: np.asarray(model.predict(images, verbose=0), np.float64)  # noqa: E731
    msp = lambda images: np.array([ref.softmax(v).max() for v in logits(images)])  # noqa: E731
    # The same copies by hand: batch i of pair j with the seed pair (j, i).
    shifted = np.concatenate([corrupt(x[i:i + 8], name, 2, (j, i // 8)).numpy()
                              for j, name in enumerate(("gaussian_noise", "contrast"))
                              for i in range(0, 20, 8)])
    every = np.concatenate([x, shifted])
    want_standard = evaluate_open_set(msp(x), msp(x_unknown), logits(x).argmax(1), y)
    want_full = evaluate_open_set(msp(every), msp(x_unknown), logits(every).argmax(1), np.tile(y, 3))
    assert result["msp"]["standard"] == pytest.approx(want_standard)
    assert result["msp"]["full_spectrum"] == pytest.approx(want_full)
    with pytest.raises(ValueError, match="Unknown corruption"):
        evaluate_full_spectrum(model, (x, y), x_unknown, corruptions=("fog",))


def test_tuning_picks_the_best_validation_auroc_and_stores_it(data):
    model = mlp()
    val_known, val_unknown = data["known"], data["unknown"][0]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tuned = tune_scores(model, val_known, val_unknown, ("energy", "react", "mls"),
                            feature_layer="hidden", train_data=data["train"],
                            grids={"react": {"percentile": (10.0, 50.0, 99.0)}})
    hidden, z = numpy_forward(model, val_known[0].astype(np.float64))
    hidden_u, z_u = numpy_forward(model, val_unknown.astype(np.float64))
    train_hidden, _ = numpy_forward(model, data["train"][0].astype(np.float64))
    w, b = (np.asarray(v, np.float64) for v in model.layers[-1].get_weights())
    labels = np.r_[np.ones(len(z)), np.zeros(len(z_u))]

    def auroc(known, unknown):
        return roc_auc_score(labels, np.r_[known, unknown])

    energy = {t: auroc([t * ref.energy(v / t) for v in z], [t * ref.energy(v / t) for v in z_u])
              for t in (1.0, 10.0, 100.0, 1000.0)}
    react = {p: auroc([ref.react(f, train_hidden, w, b, p) for f in hidden],
                      [ref.react(f, train_hidden, w, b, p) for f in hidden_u]) for p in (10.0, 50.0, 99.0)}
    best_t = max(energy, key=energy.get)  # the first of equal values, as the grid order
    best_p = max(react, key=react.get)
    # An end of the grid that beats every other value is reported as an edge (and warned).
    for name, option, aurocs, best in (("energy", "temperature", energy, best_t),
                                       ("react", "percentile", react, best_p)):
        end = {min(aurocs): "lowest", max(aurocs): "highest"}.get(best)
        beats = aurocs[best] > max(v for k, v in aurocs.items() if k != best)
        expected = {option: end} if end and beats else None
        assert tuned[name].get("edge") == expected, (name, aurocs)
        assert (f"the best {option} of {name!r}" in " ".join(str(w.message) for w in record)) == bool(expected)
    assert tuned["energy"]["options"] == {"temperature": best_t}
    assert tuned["energy"]["auroc"] == pytest.approx(energy[best_t])
    assert [t["auroc"] for t in tuned["energy"]["trials"]] == pytest.approx(list(energy.values()))
    assert tuned["react"]["options"] == {"percentile": best_p}
    assert tuned["react"]["scorer"].options == {"percentile": best_p}
    assert tuned["react"]["scorer"].validation_auroc == pytest.approx(react[best_p])
    assert tuned["mls"]["options"] == {} and len(tuned["mls"]["trials"]) == 1
    assert tuned_options(tuned) == {"energy": {"temperature": best_t}, "react": {"percentile": best_p}}
    with pytest.raises(ValueError, match="at least one value"):
        tune_scores(model, val_known, val_unknown, ("react",), feature_layer="hidden",
                    train_data=data["train"], grids={"react": {"percentile": ()}})


def test_an_edge_is_a_best_end_of_the_grid_that_beats_every_other_value():
    from keras_gradmix.osr.tuning import _edges

    def trials(aurocs):  # {(k, m): auroc} in grid order
        return [{"options": {"k": k, "m": m}, "auroc": a} for (k, m), a in aurocs.items()]

    grid = {"k": (50, 100, 200), "m": (1, 2)}
    aurocs = {(50, 1): 0.9, (50, 2): 0.8, (100, 1): 0.85, (100, 2): 0.7, (200, 1): 0.6, (200, 2): 0.6}
    with pytest.warns(UserWarning, match=r"the best k of 'knn' on validation is 50, the lowest "
                                         r"value of its grid \(50, 100, 200\); a lower one"):
        assert _edges("knn", grid, trials(aurocs), (0.9, {"k": 50, "m": 1})) == {"k": "lowest", "m": "lowest"}
    aurocs[(200, 2)] = 0.95
    with pytest.warns(UserWarning, match="grids={'knn': {'m': "):
        assert _edges("knn", grid, trials(aurocs), (0.95, {"k": 200, "m": 2})) == {"k": "highest", "m": "highest"}
    aurocs[(100, 1)] = 0.95  # ties it: k = 100 is no end, and m = 1 does not beat m = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _edges("knn", grid, trials(aurocs), (0.95, {"k": 100, "m": 1})) == {}


def test_tuning_odin_searches_temperature_and_noise(data):
    model = mlp()
    tuned = tune_scores(model, data["known"], data["unknown"][0], ("odin",))
    assert len(tuned["odin"]["trials"]) == 8
    assert tuned["odin"]["auroc"] == max(t["auroc"] for t in tuned["odin"]["trials"])


def test_plots_add_the_oscr_row_and_draw_the_reliability_diagram(tmp_path):
    from matplotlib.image import imread

    from keras_gradmix.osr import plot_open_set, plot_reliability

    rng = np.random.default_rng(2)
    known = {"msp": rng.random(50), "mls": rng.random(50)}
    unknown = {"msp": rng.random(30) * 0.8, "mls": rng.random(30)}
    two_rows = imread(plot_open_set(known, unknown, tmp_path / "roc.png"))
    three_rows = imread(plot_open_set(known, unknown, tmp_path / "a" / "oscr.png",
                                      known_correct=rng.random(50) < 0.7))
    assert two_rows.shape[:2] == (600, 640) and three_rows.shape[:2] == (900, 640)
    image = imread(plot_reliability(rng.random(40), rng.random(40) < 0.5, tmp_path / "rel.png", bins=5))
    assert image.shape[:2] == (500, 400)
