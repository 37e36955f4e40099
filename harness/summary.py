"""What a finished run reports beside its files: a scalar objective (for sweepers) and a short console table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

REDUCERS = ("mean", "median", "min", "max", "sum")
MAX_CONSOLE_ROWS = 30


def objective(summary: pd.DataFrame, spec: Mapping[str, Any] | None) -> float:
    """``spec`` = ``{column, where: {key: value}, reduce}``: ``reduce`` of ``column`` over the summary rows matching
    every ``where`` pair (``experiment.objective`` in each experiment file). NaN when no row matches; a column the
    summary lacks is a ``ValueError`` naming the columns it has."""
    if not spec:
        return math.nan
    column, reduce = str(spec["column"]), str(spec.get("reduce", "mean"))
    if reduce not in REDUCERS:
        raise ValueError(f"experiment.objective.reduce={reduce!r}; choose one of {REDUCERS}")
    if column not in summary:
        raise ValueError(f"experiment.objective.column={column!r} is not a summary column; "
                         f"it has {list(summary.columns)}")
    rows = summary
    for key, value in dict(spec.get("where") or {}).items():
        if key not in rows:
            raise ValueError(f"experiment.objective.where.{key}: not a summary column; it has {list(summary.columns)}")
        rows = rows[rows[key].astype(str) == str(value)]
    values = pd.to_numeric(rows[column], errors="coerce").dropna()
    if values.empty:
        return math.nan
    return float(getattr(values, reduce)())


def console_table(summary: pd.DataFrame, columns: Sequence[str] | None = None,
                  max_rows: int = MAX_CONSOLE_ROWS, source: str = "summary.csv") -> str:
    """The summary's headline columns (those of ``columns`` it has, else all), floats to 4 significant digits, missing
    values as ``-``, at most ``max_rows`` rows."""
    cols = [c for c in (columns or summary.columns) if c in summary] or list(summary.columns)
    shown = summary[cols].head(max_rows)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 28):
        text = shown.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")
    if len(summary) > max_rows:
        text += f"\n… {len(summary) - max_rows} more rows in {source}"
    return text
