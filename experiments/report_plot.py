"""The figures of ``coldstart-report``: a report's cells as bars (every key that varies is an axis, a colour or a
panel, never pooled; the title says what every bar shares) and a comparison's ratios with their intervals."""

from __future__ import annotations

import itertools
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments import style

log = logging.getLogger("coldstart.report")

MAX_PANELS = 24


def _text(value: Any) -> str:
    """A key's value as a label: an unset key (the run did not set it) says so; 8.0 is 8."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unset"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _title(metric: str, fixed: dict[str, Any]) -> str:
    shared = ", ".join(f"{k}={_text(v)}" for k, v in fixed.items() if k != "complete")
    text = style.label(metric) + (f" — every bar: {shared}" if shared else "")
    return textwrap.fill(text, 110)


def report_figure(table: pd.DataFrame, keys: Sequence[str], metric: str, replicate: str, fixed: dict[str, Any],
                  path: Path, jobs: int, incomplete: Sequence[str] = ()) -> Path | None:
    """Bars of the median ``metric`` per cell with IQR whiskers from its replicates: the first varying key on x, the
    second as colour, the rest as panels; ``<path>.plotted.csv`` holds exactly the plotted cells."""
    med, q25, q75 = f"{metric}_median", f"{metric}_q25", f"{metric}_q75"
    if med not in table.columns:
        return None
    data = table.dropna(subset=[med]).copy()
    if data.empty:
        return None
    varying = [k for k in keys if k in data.columns and data[k].nunique(dropna=False) > 1]
    for k in varying:
        data[k] = data[k].map(_text)
    x = varying[0] if varying else "cell"
    hue = varying[1] if len(varying) > 1 else x
    facets = varying[2:]
    if not varying:
        data["cell"] = "all"
    panels = [tuple(p) for p in data[facets].drop_duplicates().itertuples(index=False)] if facets else [()]
    if len(panels) > MAX_PANELS:
        log.warning("report figure: %d combinations of %s are too many panels to draw; report.csv has them all",
                    len(panels), facets)
        return None
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    order = list(dict.fromkeys(data[x]))
    hue_order = list(dict.fromkeys(data[hue]))
    width = 1.8 + max(2.6, 0.35 * len(order) * max(1, len(hue_order) if hue != x else 1)) * ncols
    fig, axes = style.figure(nrows, ncols, width=width, height=2.9 * nrows + 0.6, sharey=True)
    plotted = []
    flat = list(axes.flat)
    for ax, panel in itertools.zip_longest(flat, panels):
        if panel is None:
            ax.set_visible(False)
            continue
        part = data
        for k, v in zip(facets, panel, strict=True):
            part = part[part[k] == v]
        rows = style.bars(ax, part, x, hue, med, lo=part[q25], hi=part[q75], n="n", order=order,
                          hue_order=hue_order)
        for k, v in zip(facets, panel, strict=True):
            rows[k] = v
        plotted.append(rows)
        if facets:
            ax.set_title(", ".join(f"{k}={v}" for k, v in zip(facets, panel, strict=True)), fontsize=9)
        ax.set_xlabel(style.label(x) if varying else "")
        if max(len(str(o)) for o in order) > 8:
            ax.tick_params(axis="x", labelrotation=30)
    frame = pd.concat(plotted, ignore_index=True)
    style.log_if_wide(flat[: len(panels)], frame[med])
    for ax in axes[:, 0]:
        ax.set_ylabel(style.label(metric))
    fig.suptitle(_title(metric, fixed))
    notes = [f"bars: median over each cell's {replicate}, whiskers IQR; {style.n_note(frame['n'], replicate)}",
             f"{jobs} run{'s' if jobs != 1 else ''}"]
    if incomplete:
        notes.append(f"{len(incomplete)} incomplete (complete=False)")
    style.legend_outside(fig, flat[: len(panels)], title=style.label(hue) if hue != x else None, notes=notes)
    return style.save(fig, path, frame)[0]


def compare_figure(table: pd.DataFrame, keys: Sequence[str], metric: str, between: Sequence[str],
                   path: Path) -> Path:
    """One bar per paired cell: B/A of ``metric`` with its bootstrap 95 % interval, a line at 1."""
    data = table.copy()
    varying = [k for k in keys if data[k].nunique(dropna=False) > 1]
    data["cell"] = data[varying].map(_text).agg(" · ".join, axis=1) if varying else "all"
    fixed = {k: data[k].iloc[0] for k in keys if k not in varying}
    fig, axes = style.figure(width=5.5 + 0.5 * len(data), height=3.8)
    ax = axes[0, 0]
    pos = np.arange(len(data))
    ax.bar(pos, data["ratio_b_over_a"], color=[style.color(c.split(" · ")[0]) for c in data["cell"]], width=0.7)
    err = data[["ratio_lo", "ratio_hi"]].to_numpy(float)
    has = ~np.isnan(err).any(axis=1)
    if has.any():
        r = data["ratio_b_over_a"].to_numpy(float)
        ax.errorbar(pos[has], r[has], yerr=[np.maximum(r[has] - err[has, 0], 0), np.maximum(err[has, 1] - r[has], 0)],
                    fmt="none", ecolor="0.15", capsize=2)
    ax.axhline(1.0, color="0.2", linestyle="--", linewidth=1)
    ax.set_xticks(pos, list(data["cell"]), rotation=30 if len(data) > 3 else 0, ha="right" if len(data) > 3
                  else "center")
    ax.set_xlabel(" · ".join(varying) if varying else "")
    ax.set_ylabel("B / A (ratio of medians)")
    shared = ", ".join(f"{k}={v}" for k, v in fixed.items())
    fig.suptitle(textwrap.fill(f"B / A of {style.label(metric)}" + (f" — every bar: {shared}" if shared else ""),
                               100))
    def span(col: str) -> str:
        lo, hi = int(data[col].min()), int(data[col].max())
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    n_note = f"n = {span('n_a')} (A), {span('n_b')} (B) replicates per cell"
    style.legend_outside(fig, [ax], notes=["whiskers: bootstrap 95 % interval of the ratio of medians", n_note,
                                           "A and B differ in: " + (", ".join(between) or "nothing recorded")])
    return style.save(fig, path, data)[0]
