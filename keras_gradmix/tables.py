"""Tidy result tables (a list of dict rows): mean ± std over runs, Markdown, CSV.

No pandas: the evaluation helpers return plain rows, these write them out.

Example:
    >>> rows = [{"method": "plain", "auroc": 0.91}, {"method": "plain", "auroc": 0.93}]
    >>> print(to_markdown(mean_std(rows, by=["method"], values=["auroc"]),
    ...                   formats={"auroc": "{:.2f}", "auroc_std": "{:.2f}"}))
    | method | runs | auroc | auroc_std |
    |---|---|---|---|
    | plain | 2 | 0.92 | 0.01 |
"""

from __future__ import annotations

import csv
import io
from typing import Mapping, Sequence

import numpy as np


def columns_of(rows: Sequence[Mapping]) -> list[str]:
    """Every key of ``rows``, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def mean_std(rows: Sequence[Mapping], by: Sequence[str], values: Sequence[str]) -> list[dict]:
    """One row per distinct ``by`` combination (first-seen order): the ``by``
    keys, ``runs`` (rows in the group), and per value ``v`` its mean ``v`` and
    population standard deviation ``v_std``."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in by), []).append(row)
    out = []
    for key, members in groups.items():
        row = dict(zip(by, key), runs=len(members))
        for value in values:
            numbers = np.array([m[value] for m in members], dtype=np.float64)
            row[value], row[f"{value}_std"] = float(numbers.mean()), float(numbers.std())
        out.append(row)
    return out


def _cell(value, fmt) -> str:
    if value is None:
        return "–"
    if fmt is not None:
        return fmt.format(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def to_markdown(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                formats: Mapping[str, str] | None = None) -> str:
    """A Markdown table; ``formats`` maps a column to a ``str.format`` pattern
    (floats default to 4 significant digits, missing cells show "–")."""
    columns = list(columns or columns_of(rows))
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), formats.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def to_csv(rows: Sequence[Mapping], path: str | None = None,
           columns: Sequence[str] | None = None) -> str:
    """The rows as CSV text (full precision); also written to ``path`` if given."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns or columns_of(rows)),
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    if path is not None:
        with open(path, "w", newline="") as f:
            f.write(text)
    return text
