import csv

import keras
import numpy as np
import pytest
from conftest import mnist_cnn, sparse_ce

from keras_gradmix import GradMixModel
from keras_gradmix.data import mnist_digits
from keras_gradmix.osr import OpenSetEvaluation, collect, evaluate_model_open_set, knn_predict

KNOWN = [2, 4, 5, 9, 8, 3]  # MNIST split 0


@pytest.fixture(scope="module")
def osr_data():
    x, y = mnist_digits(seed=0)
    is_known = np.isin(y, KNOWN)
    remap = {c: i for i, c in enumerate(KNOWN)}
    xk, yk = x[is_known], np.array([remap[c] for c in y[is_known]])
    return (xk[:1200], yk[:1200]), (xk[1200:1500], yk[1200:1500]), x[~is_known][:300]


def six_class_cnn():
    model = mnist_cnn()
    return keras.Model(model.inputs, keras.layers.Dense(6, name="head")(model.layers[-2].output))


ALL_SCORES = ("msp", "mls", "energy", "entropy", "knn", "mahalanobis")


@pytest.mark.parametrize("wrap,scores", [(False, ALL_SCORES), (True, ("mls", "knn"))])
def test_logged_values_equal_a_direct_call(osr_data, tmp_path, wrap, scores):
    train, known, unknown = osr_data
    model = six_class_cnn()
    trainer = GradMixModel(model, "conv2", seed=0) if wrap else model
    trainer.compile(optimizer="adam", loss=sparse_ce(), metrics=["accuracy"])
    callback = OpenSetEvaluation(
        known, unknown, scores=scores,
        every=1, csv_path=tmp_path / "osr.csv", plot_dir=tmp_path / "plots",
        train_data=train, feature_layer="flatten", log_metrics="all",
    )
    csv_logger = keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    stopper = keras.callbacks.EarlyStopping("val_osr_auroc_mls", mode="max", patience=5)
    history = trainer.fit(*train, batch_size=64, epochs=2, verbose=0,
                          callbacks=[callback, csv_logger, stopper])
    logged = {k: v for k, v in history.history.items() if k.startswith("val_osr_")}
    assert len(logged) == 9 * len(scores) and all(len(v) == 2 for v in logged.values())
    direct = evaluate_model_open_set(
        trainer, known, unknown, scores, train_data=train, feature_layer="flatten"
    )
    for score, metrics in direct.items():
        for metric, value in metrics.items():
            assert logged[f"val_osr_{metric}_{score}"][-1] == pytest.approx(value, rel=1e-6)
    assert direct["mls"]["accuracy"] > 0.5 and direct["mls"]["auroc"] > 0.5
    with open(tmp_path / "log.csv") as f:
        assert "val_osr_auroc_mls" in next(csv.reader(f))  # CSVLogger saw them
    with open(tmp_path / "osr.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["score"] for r in rows] == 2 * list(scores) and "ccr_fpr5" in rows[0]
    last_mls = [r for r in rows if r["score"] == "mls"][-1]
    assert float(last_mls["auroc"]) == pytest.approx(direct["mls"]["auroc"], abs=1e-6)
    # What GradMix did each epoch, beside the scores (empty for a plain model).
    for name in ("gradmix_masked", "gradmix_flat", "gradmix_area"):
        column = [r[name] for r in rows if r["score"] == "mls"]
        if wrap:
            assert [float(v) for v in column] == pytest.approx(history.history[name], abs=1e-6)
        else:
            assert column == ["", ""] and name not in history.history
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "osr_epoch_001.png", "osr_epoch_002.png"]


def test_every_n_epochs_and_headline_logs_by_default(osr_data, capsys):
    train, known, unknown = osr_data
    model = six_class_cnn()
    model.compile(optimizer="adam", loss=sparse_ce())
    callback = OpenSetEvaluation(known, unknown, scores=("msp", "mls"), every=2)
    history = model.fit(*train, batch_size=128, epochs=4, verbose=2, callbacks=[callback])
    assert [row["epoch"] for row in callback.history] == [2, 2, 4, 4]
    assert set(callback.history[0]) >= {"fpr95", "aupr_in", "ccr_fpr5"}  # history keeps all
    logged = sorted(k for k in history.history if k.startswith("val_osr_"))
    assert logged == ["val_osr_auroc_mls", "val_osr_auroc_msp", "val_osr_oscr_mls", "val_osr_oscr_msp"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "val_osr_" in line]
    assert len(lines) == 2 and all(line.count("val_osr_") == 4 for line in lines)


def test_tf_data_inputs(osr_data):
    import tensorflow as tf

    train, known, unknown = osr_data
    model = six_class_cnn()
    as_ds = lambda d: tf.data.Dataset.from_tensor_slices(d).batch(100)  # noqa: E731
    on_arrays = evaluate_model_open_set(model, known, unknown)
    on_datasets = evaluate_model_open_set(model, as_ds(known), as_ds((unknown, np.zeros(len(unknown)))))
    for score in on_arrays:
        for metric in on_arrays[score]:
            assert on_datasets[score][metric] == pytest.approx(on_arrays[score][metric], rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scores=("msp", "nope")), "Unknown open-set scores"),
        (dict(scores=("knn",)), "feature_layer"),
        (dict(every=0), "every must be"),
        (dict(log_metrics=("auroc", "auc")), r"log_metrics must be 'all' or names from .*\['auc'\]"),
        (dict(predictions="knn"), "predictions='knn'.*feature_layer"),
        (dict(predictions="probe"), "predictions must be one of"),
    ],
)
def test_bad_callback_arguments(osr_data, kwargs, match):
    _, known, unknown = osr_data
    with pytest.raises(ValueError, match=match):
        OpenSetEvaluation(known, unknown, **kwargs)


def test_knn_predictions_for_an_encoder_without_a_classification_head(osr_data):
    train, known, unknown = osr_data
    model = six_class_cnn()
    model.compile(optimizer="adam", loss=sparse_ce())
    model.fit(*train, epochs=1, batch_size=64, verbose=0)
    encoder = keras.Model(model.inputs, model.get_layer("flatten").output)  # features, no logits
    callback = OpenSetEvaluation(known, unknown, scores=("knn",), train_data=train,
                                 feature_layer="flatten", predictions="knn")
    callback.set_model(encoder)
    accuracy = callback.evaluate()["knn"]["accuracy"]
    features = {name: collect(encoder, data, "flatten")["features"] for name, data in
                (("train", train), ("known", known))}
    expected = np.mean(knn_predict(features["known"], features["train"], train[1]) == known[1])
    assert accuracy == pytest.approx(expected) and accuracy > 0.8


def test_the_callback_fits_a_decision_on_held_out_knowns_and_saves_it(osr_data, tmp_path):
    from keras_gradmix.osr import OpenSetClassifier

    train, known, unknown = osr_data
    held_out = (train[0][-200:], train[1][-200:])
    model = six_class_cnn()
    model.compile(optimizer="adam", loss=sparse_ce())
    decision = OpenSetClassifier("mls", recall=0.9)
    callback = OpenSetEvaluation(known, unknown, scores=("mls",), decision=decision,
                                 held_out=held_out, decision_path=tmp_path / "decision.json")
    history = model.fit(train[0][:-200], train[1][:-200], batch_size=64, epochs=1, verbose=0,
                        callbacks=[callback])
    saved = OpenSetClassifier.load(tmp_path / "decision.json")
    assert saved.threshold == decision.threshold
    report = saved.evaluate(model, known, unknown)
    assert history.history["val_osr_known_recall"][-1] == pytest.approx(report["known_recall"])
    assert history.history["val_osr_unknown_rejected"][-1] == pytest.approx(report["unknown_rejected"])
    with pytest.raises(ValueError, match="decision needs held_out"):
        OpenSetEvaluation(known, unknown, decision=decision)
