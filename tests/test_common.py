"""What the studies share (benchmarks/common.py): recipes and paired statistics."""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tf_only

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

ROWS = [{"method": "plain", "seed": 0, "auroc": 0.5},
        {"method": "gradmix", "seed": 0, "auroc": 0.75},
        {"method": "plain", "seed": 1, "auroc": 0.7, "extra": "x"}]

pytestmark = tf_only("the recipes build tf.data pipelines")


@pytest.mark.parametrize("method", ["cutmix", "mixup"])
def test_cutmix_and_mixup_batches_repeat_with_the_seed(method):
    import tensorflow as tf

    from common import one_hot_batches

    x = np.random.RandomState(0).rand(512, 8, 8, 1).astype("float32")
    y = np.random.RandomState(1).randint(0, 6, 512)

    def batches(seed):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
        return [np.concatenate([b[i].numpy().ravel() for b in one_hot_batches(ds, 6, method, seed)])
                for i in (0, 1)]

    first, again, other = batches(0), batches(0), batches(1)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    assert not np.array_equal(first[0], x.ravel())  # the images were mixed


def test_open_set_arrays_keep_the_first_images_of_each_known_class():
    from keras_gradmix.data import load_arrays, osr_classes
    from common import open_set_arrays

    data = open_set_arrays("mnist5k", 0, per_class=3)
    known, _ = osr_classes("mnist5k", 0)
    raw = load_arrays("mnist5k")
    x, y = data["train"]
    assert x.shape == (3 * len(known), 28, 28, 1) and x.dtype == np.float32 and x.max() <= 1.0
    expected = np.sort(np.concatenate([np.flatnonzero(raw["y_train"] == c)[:3] for c in known]))
    np.testing.assert_array_equal(x[..., 0] * 255.0, raw["x_train"][expected].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(known)[y], raw["y_train"][expected])
    unknown_count = int((~np.isin(raw["y_test"], known)).sum())
    assert len(data["unknown_test"]) == unknown_count
    assert set(np.unique(data["known_test"][1])) == set(range(len(known)))


def test_shuffled_batches_depend_on_the_seed_alone():
    import keras

    from common import shuffled_batches

    x = np.arange(64, dtype=np.float32)[:, None]
    y = np.arange(64)

    def order(seed, before):
        keras.utils.set_random_seed(before)  # what an earlier run left behind
        epochs = shuffled_batches(x, y, seed, 16).repeat(2)
        return np.concatenate([b[1].numpy() for b in epochs])

    first = order(0, before=1)
    assert np.array_equal(first, order(0, before=2))
    assert not np.array_equal(first[:64], first[64:])  # reshuffled every epoch
    assert sorted(first[:64]) == list(range(64))
    assert not np.array_equal(first, order(1, before=1))


def test_mean_std_groups_in_first_seen_order():
    from common import mean_std

    out = mean_std(ROWS, by=["method"], values=["auroc"])
    assert out == [{"method": "plain", "runs": 2, "auroc": pytest.approx(0.6),
                    "auroc_std": pytest.approx(0.1)},
                   {"method": "gradmix", "runs": 1, "auroc": 0.75, "auroc_std": 0.0}]


def test_a_cached_run_records_its_machine_and_resumes_without_training(tmp_path):
    from common import cached_run, machine

    calls = []
    path = str(tmp_path / "runs" / "plain.json")
    run = cached_run(path, 3, "plain", lambda: calls.append(1) or {"epochs": 3, "auroc": 0.5})
    assert run == {"epochs": 3, "auroc": 0.5, "machine": machine()}
    assert machine().split(", ")[1] == f"{__import__('os').cpu_count()} CPUs"
    assert cached_run(path, 3, "plain", lambda: calls.append(1)) == run and calls == [1]
    assert cached_run(path, 4, "plain", lambda: {"epochs": 4})["epochs"] == 4  # another schedule


def test_paired_differences_are_a_t_interval_over_matching_pairs():
    from scipy import stats

    from common import paired_differences

    rng = np.random.default_rng(0)
    rows = []
    for split in range(3):
        for seed in range(2):
            base = rng.random()
            rows.append({"method": "plain", "split": split, "seed": seed, "auroc": base})
            rows.append({"method": "gm", "split": split, "seed": seed, "auroc": base + rng.normal(0.02, 0.01)})
    rows.append({"method": "gm", "split": 9, "seed": 0, "auroc": 0.0})  # no plain partner: ignored
    rows.append({"method": "solo", "split": 0, "seed": 0, "auroc": 1.0})
    gm, solo = paired_differences(rows, "auroc", "plain")
    a = np.array([r["auroc"] for r in rows[:12] if r["method"] == "gm"])
    b = np.array([r["auroc"] for r in rows[:12] if r["method"] == "plain"])
    interval = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert gm["method"] == "gm" and gm["pairs"] == 6 and gm["wins"] == int((a > b).sum())
    assert gm["diff"] == pytest.approx((a - b).mean())
    assert (gm["ci_low"], gm["ci_high"]) == pytest.approx((interval.low, interval.high))
    b0 = [r["auroc"] for r in rows if r["method"] == "plain" and (r["split"], r["seed"]) == (0, 0)][0]
    assert solo == {"method": "solo", "pairs": 1, "diff": pytest.approx(1.0 - b0),
                    "ci_low": None, "ci_high": None, "wins": 1}


def test_common_docstring_examples():
    import doctest

    import common

    assert doctest.testmod(common).failed == 0 and doctest.testmod(common).attempted >= 2
