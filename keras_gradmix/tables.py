"""Tidy result tables (a list of dict rows) as Markdown or CSV.

No pandas: the evaluation helpers (``evaluate_ood``, ...) return plain rows,
these write them out.

Examples:
    >>> rows = [{"set": "mnist", "auroc": 0.912}, {"set": "noise", "auroc": 0.995}]
    >>> print(to_markdown(rows, formats={"auroc": "{:.2f}"}))
    | set | auroc |
    |---|---|
    | mnist | 0.91 |
    | noise | 0.99 |
"""

from __future__ import annotations

import csv
import io
from typing import Mapping, Sequence



def columns_of(rows: Sequence[Mapping]) -> list[str]:
    """Every key of ``rows``, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


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
