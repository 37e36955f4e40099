"""Figures of the loading experiment, drawn from the files a run wrote (never from live objects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes

from experiments import style
from experiments.loading.metrics import CELL_KEYS, PHASES, summarize_trials

STATE_ORDER = ("cold", "warm", "hot")
CEILING_NOTE = "dashed: time to move the bytes at the cache state's ceiling (bytes ÷ ceiling GB/s)"
NA_NOTE = "n/a: no successful trial (e.g. the loader has no such tier)"


def states(rows: pd.DataFrame) -> list[str]:
    """The cache states present, cold → warm → hot first."""
    present = list(dict.fromkeys(rows["cache_state"]))
    return [s for s in STATE_ORDER if s in present] + [s for s in present if s not in STATE_ORDER]


def time_panels(axes: list[Axes], rows: pd.DataFrame, x: str, hue: str, metric: str,
                trials: pd.DataFrame | None, *, order: list[object], hue_order: list[object],
                ceilings: bool) -> tuple[pd.DataFrame, str]:
    """One panel per cache state of ``<metric>_median`` per ``x`` and ``hue`` (IQR bars, n, ceiling per x group).

    Returns the plotted rows (with ``cache_state``) and the note saying what the error bars are.
    """
    keys = [k for k in CELL_KEYS if k in rows.columns and (trials is None or k in trials.columns)]
    lo, hi, note = style.spread(rows, metric, keys, trials, center=f"{metric}_median")
    frames = []
    for ax, state in zip(axes, states(rows), strict=False):
        part = rows[rows["cache_state"] == state]
        plotted = style.bars(ax, part, x, hue, f"{metric}_median", lo=lo.loc[part.index], hi=hi.loc[part.index],
                             n="n", order=order, hue_order=hue_order)
        frames.append(plotted.assign(cache_state=state))
        ax.set_title(f"{state} cache")
        if ceilings and "ceiling_gbps_median" in part.columns:
            ok = part[part["n"] > 0]
            for i, xv in enumerate(order):
                cell = ok[ok[x] == xv]
                gbps = cell["ceiling_gbps_median"].median()
                if len(cell) and pd.notna(gbps) and gbps > 0:
                    style.ceiling(ax, float(cell["bytes"].median() / (gbps * 1e9)), i - 0.45, i + 0.45)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), note


def runtimes(rows: pd.DataFrame) -> list[str]:
    """The runtimes of a run (``["fresh"]`` for runs from before the runtime axis)."""
    return sorted(map(str, rows["runtime"].dropna().unique())) if "runtime" in rows.columns else ["fresh"]


BAR_KEYS = ["loader", "cache_state", "runtime", "engine", "compile_cache"]  # one bar of the breakdown each
DEFAULTS = {"runtime": "fresh", "engine": "eager", "compile_cache": "none"}  # runs from before an axis existed


def _breakdown(ax: Axes, ok: pd.DataFrame) -> pd.DataFrame:
    """Median of each phase per loader, cache state, runtime, engine and compile cache, stacked (medians of phases
    need not sum to a median). Each runtime and engine is its own bar: their phases are never pooled."""
    ok = ok.assign(**{k: v for k, v in DEFAULTS.items() if k not in ok.columns})
    phases = [p for p in PHASES if p in ok.columns]
    varying = [k for k in ("runtime", "engine", "compile_cache") if ok[k].nunique() > 1]
    several = bool(varying)
    med = ok.groupby(BAR_KEYS, sort=False)[phases].median().reset_index()
    med["order"] = med["cache_state"].map({s: k for k, s in enumerate(STATE_ORDER)}).fillna(len(STATE_ORDER))
    med = med.sort_values(["loader", "order", *BAR_KEYS[2:]]).reset_index(drop=True)
    cells = (med["loader"] + "\n" + med["cache_state"]
             + sum(("\n" + med[k].astype(str) for k in varying), pd.Series("", index=med.index))).tolist()
    bottom = pd.Series(0.0, index=med.index)
    for phase in phases:
        ax.bar(range(len(cells)), med[phase], bottom=bottom, label=style.label(phase), color=style.color(phase),
               edgecolor="white", linewidth=0.5)
        bottom += med[phase].fillna(0)
    ax.set_xticks(range(len(cells)), cells, fontsize=8 if not several else 7, rotation=0 if not several else 45,
                  ha="center" if not several else "right")
    ax.set_ylabel("median per phase (s)")
    ax.set_title("cold-start breakdown, spawn → first token (median of each phase)"
                 + ("" if several else f", runtime {med['runtime'].iloc[0]}, engine {med['engine'].iloc[0]}"))
    return med.drop(columns="order")


def plot_loading(run_dir: Path) -> list[Path]:
    """``loading.png``: median load time per loader, one panel per cache state (IQR of trials, ceiling), and
    the median phases of the cold start per loader and cache state."""
    trials = pd.read_parquet(run_dir / "trials.parquet")
    ok = trials[trials["ok"].astype(bool)]
    if ok.empty:
        return []
    rows = summarize_trials(trials)
    cache_states = states(rows)
    loaders = sorted(rows["loader"].unique())
    rows = rows.assign(**{k: v for k, v in DEFAULTS.items() if k not in rows.columns})
    varying = [k for k in ("runtime", "engine", "compile_cache") if rows[k].nunique() > 1]
    if varying:  # each runtime, engine and compile cache is its own series, never pooled
        rows["series"] = rows[varying].astype(str).agg(" · ".join, axis=1)
    kinds = sorted(rows["series"].unique()) if varying else runtimes(rows)
    # one series: a bar per loader in its colour; several: bars per loader in each series' colour
    hue, hue_order = ("series", list[object](kinds)) if varying else ("loader", list[object](loaders))
    style.apply()
    cells = len(loaders) * len(kinds) * len(cache_states)
    fig = plt.figure(figsize=(max(3.0 * len(cache_states) + 3.8, 0.45 * cells + 3.8), 7.0), layout="constrained")
    layout: Any = [cache_states, ["breakdown"] * len(cache_states)]
    mosaic = fig.subplot_mosaic(layout)
    panels = [mosaic[s] for s in cache_states]
    for ax in panels[1:]:
        ax.sharey(panels[0])
    plotted, note = time_panels(panels, rows, "loader", hue, "load_s", trials, order=loaders,
                                hue_order=hue_order, ceilings=True)
    style.log_if_wide(panels, [*plotted["load_s_median"], *plotted["err_hi"]])
    panels[0].set_ylabel("median load time (s)")
    for ax in panels:
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    phases = _breakdown(mosaic["breakdown"], ok)
    first = ok.iloc[0]
    size = style.fmt_bytes(first["bytes"])
    fig.suptitle(f"Load time, {first['model']} {first['dtype']} on {first['device']} ({size})")
    style.legend_outside(fig, [*panels, mosaic["breakdown"]],
                         notes=[style.n_note(rows["n"]), note, CEILING_NOTE,
                                NA_NOTE if (rows["n"] == 0).any() else ""])
    plotted = pd.concat([plotted.assign(column="load_s_median"),
                         phases.melt(id_vars=BAR_KEYS, var_name="column")],
                        ignore_index=True)
    return style.save(fig, run_dir / "loading", plotted)


def plot_report(summary: pd.DataFrame, path: Path, trials: pd.DataFrame | None = None) -> list[Path]:
    """The sweep figure: median load time per model and dtype per loader, one panel per cache state (shared y);
    ``trials`` (optional) gives exact IQR bars. Writes ``path`` (PNG) and its PDF."""
    rows = summary.copy()
    if not (rows["n"] > 0).any():
        return []
    rows["model_dtype"] = rows["model"] + "\n" + rows["dtype"]
    order = list(dict.fromkeys(rows.sort_values(["bytes", "model", "dtype"])["model_dtype"]))
    if len(runtimes(rows)) > 1:  # each loader on each runtime is its own series, never pooled
        rows["loader"] = rows["loader"].astype(str) + " · " + rows["runtime"].astype(str)
    loaders = sorted(rows["loader"].unique())
    cache_states = states(rows)
    fig, axes = style.figure(1, len(cache_states), width=2.4 + (1.2 + 0.5 * len(order)) * len(cache_states),
                             height=3.8, sharey=True)
    panels = list(axes[0])
    plotted, note = time_panels(panels, rows, "model_dtype", "loader", "load_s", trials, order=order,
                                hue_order=loaders, ceilings=True)
    style.log_if_wide(panels, [*plotted["load_s_median"], *plotted["err_hi"]])
    panels[0].set_ylabel("median load time (s)")
    fig.supxlabel("model, dtype", fontsize=10)
    fig.suptitle(f"Load time per model, dtype and loader ({', '.join(sorted(map(str, rows['device'].unique())))})")
    style.legend_outside(fig, panels, title="loader",
                         notes=[style.n_note(rows["n"]), note, CEILING_NOTE,
                                NA_NOTE if (rows["n"] == 0).any() else ""])
    return style.save(fig, path, plotted)
