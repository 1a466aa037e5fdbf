"""Result tables as Markdown and CSV."""

import csv
import io

import pytest

from keras_gradmix.tables import to_csv, to_markdown

pytestmark = pytest.mark.backend_free  # no backend involved: one pass of `make test`


ROWS = [{"method": "plain", "seed": 0, "auroc": 0.5},
        {"method": "gradmix", "seed": 0, "auroc": 0.75},
        {"method": "plain", "seed": 1, "auroc": 0.7, "extra": "x"}]


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
