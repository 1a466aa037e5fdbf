"""Every row of the error table (tests/error_table.py, docs/errors.md) on every
backend: the error, its message, and where it is raised (before any update)."""

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import sequential_cnn, sparse_ce
from error_table import CASES, markdown

from keras_gradmix import GradMixModel

ROOT = Path(__file__).resolve().parents[1]


def frames(excinfo) -> list[str]:
    return [str(entry.path) for entry in excinfo.traceback]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_bad_input_gets_its_error_where_the_table_says(case, batch):
    if keras.backend.backend() not in case.backends:
        pytest.skip(f"{case.id} concerns {case.backends} only")
    with pytest.raises(case.error, match=case.match) as excinfo:
        case.run(batch)
    seen = frames(excinfo)
    in_inspection = any(p.endswith("keras_gradmix/inspection.py") for p in seen)
    in_step = any("keras_gradmix/steps/" in p for p in seen)
    if case.where in ("construction", "compile"):
        assert not in_inspection and not in_step
    elif case.where == "first batch":
        assert in_inspection, seen
    elif case.where == "first step":
        assert in_step and not in_inspection, seen


def test_the_documented_table_is_the_tested_one():
    assert (ROOT / "docs" / "errors.md").read_text() == markdown()
    assert len(CASES) >= 30


def test_an_error_in_the_first_batch_leaves_the_weights_untouched(batch):
    model = sequential_cnn()
    before = [w.copy() for w in model.get_weights()]
    gm = GradMixModel(model, "conv2")
    gm.compile(optimizer="sgd", loss=sparse_ce())
    with pytest.raises(ValueError, match="value_range"):
        gm.fit(255 * batch[0], batch[1], epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_check_inputs_false_skips_the_first_batch_checks(batch):
    gm = GradMixModel(sequential_cnn(), "conv2", check_inputs=False, value_range=(0, 1))
    gm.compile(optimizer="sgd", loss=sparse_ce())
    gm.fit(2.0 * batch[0], batch[1], epochs=1, verbose=0)  # out of range, but not checked


def test_soft_labels_that_do_not_sum_to_one_warn(batch):
    gm = GradMixModel(sequential_cnn(), "conv2")
    gm.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    soft = 0.3 * np.eye(10, dtype="float32")[batch[1]]
    with pytest.warns(UserWarning, match=r"soft labels whose rows sum to \[0.3, 0.3\]"):
        gm.fit(batch[0], soft, epochs=1, verbose=0)
    multi_hot = np.eye(10, dtype="float32")[batch[1]] + np.eye(10, dtype="float32")[(batch[1] + 1) % 10]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="GradMix")
        gm.fit(batch[0], multi_hot, epochs=1, verbose=0)  # multi-label: no warning


def test_the_checks_read_tf_data_and_pydataset_without_consuming_them(batch):
    import tensorflow as tf

    x, y = 255 * batch[0], batch[1]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return x, y

    for data in (tf.data.Dataset.from_tensor_slices((x, y)).batch(8), Batches()):
        gm = GradMixModel(sequential_cnn(), "conv2")
        gm.compile(optimizer="sgd", loss=sparse_ce())
        with pytest.raises(ValueError, match=r"pixels span \[[0-9.]+, 255\]"):
            gm.fit(data, epochs=1, verbose=0)
    generator = (b for b in [(x / 255, y), (x / 255, y)])
    gm = GradMixModel(sequential_cnn(), "conv2")
    gm.compile(optimizer="sgd", loss=sparse_ce())
    history = gm.fit(generator, epochs=1, verbose=0)  # the peeked batch is trained on too
    assert len(history.history["loss"]) == 1


def test_train_on_batch_inspects_the_first_batch_after_each_compile(batch, monkeypatch):
    from keras_gradmix import inspection

    calls = []
    original = inspection.inspect_batch
    monkeypatch.setattr(inspection, "inspect_batch",
                        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    gm = GradMixModel(sequential_cnn(), "conv2")
    gm.compile(optimizer="sgd", loss=sparse_ce())
    with pytest.raises(ValueError, match="labels must be class indices"):
        gm.train_on_batch(batch[0], batch[1] + 10)  # the first call is looked at
    for _ in range(3):
        gm.train_on_batch(*batch)
    assert len(calls) == 2  # the failed first call, then the first that trained
    gm.compile(optimizer="sgd", loss=sparse_ce())
    gm.train_on_batch(*batch)
    assert len(calls) == 3  # once again after compile()


def test_flat_map_warnings_name_the_right_cause(batch):
    from keras_gradmix.inspection import flat_cause

    x, y = batch
    gm = GradMixModel(sequential_cnn(), "conv2")
    gm.compile(optimizer="sgd", loss=sparse_ce())
    with pytest.warns(UserWarning, match="is flat on the first batch.*Every input of the batch is "
                                         "constant.*data pipeline"):
        gm.fit(np.zeros_like(x), y, batch_size=8, epochs=1, verbose=0)
    overflow = np.full((len(x), 24, 24), np.nan, "float32")
    assert "attribution overflowed" in flat_cause(gm, x, y, [overflow])
    assert "does not reach" in flat_cause(gm, x, y, [np.zeros((len(x), 24, 24), "float32")])
