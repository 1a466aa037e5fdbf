"""Result tables: grouping, paired differences, Markdown and CSV."""

import csv
import io

import numpy as np
import pytest
from scipy import stats

from keras_gradmix.tables import mean_std, paired_differences, to_csv, to_markdown


ROWS = [{"method": "plain", "seed": 0, "auroc": 0.5},
        {"method": "gradmix", "seed": 0, "auroc": 0.75},
        {"method": "plain", "seed": 1, "auroc": 0.7, "extra": "x"}]


def test_mean_std_groups_in_first_seen_order():
    out = mean_std(ROWS, by=["method"], values=["auroc"])
    assert out == [{"method": "plain", "runs": 2, "auroc": pytest.approx(0.6),
                    "auroc_std": pytest.approx(0.1)},
                   {"method": "gradmix", "runs": 1, "auroc": 0.75, "auroc_std": 0.0}]


def test_markdown_and_csv():
    assert to_markdown(ROWS, formats={"auroc": "{:.1%}"}) == "\n".join([
        "| method | seed | auroc | extra |",
        "|---|---|---|---|",
        "| plain | 0 | 50.0% | – |",
        "| gradmix | 0 | 75.0% | – |",
        "| plain | 1 | 70.0% | x |",
    ])
    assert to_markdown(ROWS[:1], columns=["auroc", "method"]) == (
        "| auroc | method |\n|---|---|\n| 0.5 | plain |")
    text = to_csv(ROWS)
    assert list(csv.DictReader(io.StringIO(text))) == [
        {"method": "plain", "seed": "0", "auroc": "0.5", "extra": ""},
        {"method": "gradmix", "seed": "0", "auroc": "0.75", "extra": ""},
        {"method": "plain", "seed": "1", "auroc": "0.7", "extra": "x"}]
    assert to_csv([{"a": 1 / 3}]) == f"a\n{1 / 3!r}\n"  # full precision


def test_tables_docstring_example():
    import doctest

    import keras_gradmix.tables

    assert doctest.testmod(keras_gradmix.tables).failed == 0


def test_paired_differences_are_a_t_interval_over_matching_pairs():
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
