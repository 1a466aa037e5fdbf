"""Tidy result tables (a list of dict rows): mean ± std over runs, Markdown, CSV.

No pandas: the evaluation helpers return plain rows, these write them out.

Examples:
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


def paired_differences(rows: Sequence[Mapping], value: str, baseline: str, by: str = "method",
                       pair: Sequence[str] = ("split", "seed"), confidence: float = 0.95) -> list[dict]:
    """Each group's per-pair difference to ``baseline`` on the same ``pair``
    keys (e.g. the same split and seed): ``value(group) - value(baseline)``.

    One row per group other than the baseline (first-seen order): ``by``,
    ``pairs`` (pairs found in both), ``diff`` (mean difference), ``ci_low`` and
    ``ci_high`` (a t-interval at ``confidence`` over the pairs: mean ±
    t(n-1) · sd / sqrt(n), sd with n - 1; None for fewer than two pairs) and
    ``wins`` (pairs where the group is higher).

    Examples:
        >>> rows = [{"method": m, "split": 0, "seed": s, "auroc": a} for m, s, a in
        ...         [("plain", 0, .60), ("plain", 1, .62), ("gm", 0, .63), ("gm", 1, .64)]]
        >>> [round(r["diff"], 3) for r in paired_differences(rows, "auroc", "plain")]
        [0.025]
    """
    from scipy import stats

    def key(row):
        return tuple(row[k] for k in pair)

    base = {key(r): r[value] for r in rows if r[by] == baseline}
    out = []
    for group in dict.fromkeys(r[by] for r in rows if r[by] != baseline):
        diffs = np.array([r[value] - base[key(r)] for r in rows
                          if r[by] == group and key(r) in base], dtype=np.float64)
        row = {by: group, "pairs": len(diffs), "diff": float(diffs.mean()) if len(diffs) else None,
               "ci_low": None, "ci_high": None, "wins": int((diffs > 0).sum())}
        if len(diffs) >= 2:
            half = stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
            row["ci_low"], row["ci_high"] = float(diffs.mean() - half), float(diffs.mean() + half)
        out.append(row)
    return out


def paired_cells(row: Mapping) -> dict:
    """Table cells of one :func:`paired_differences` row: ``pairs``, ``mean
    difference``, ``95 % CI`` (``[low, high]``, "–" under two pairs), ``wins``.

    Examples:
        >>> paired_cells({"pairs": 3, "diff": 1.5, "ci_low": -0.25, "ci_high": 3.25, "wins": 2})
        {'pairs': 3, 'mean difference': '+1.50', '95 % CI': '[-0.25, +3.25]', 'wins': '2/3'}
    """
    interval = "–" if row["ci_low"] is None else f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    return {"pairs": row["pairs"], "mean difference": f"{row['diff']:+.2f}", "95 % CI": interval,
            "wins": f"{row['wins']}/{row['pairs']}"}
