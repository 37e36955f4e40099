"""Figures of the loading suite (sllm_loading, sllm_ablation, dtype_coldstart, calibrate), drawn from run files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from experiments import style
from experiments.loading.plots import CEILING_NOTE, NA_NOTE, states, time_panels


def _summary(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "summary.csv")


def _na_note(rows: pd.DataFrame) -> str:
    return NA_NOTE if (rows["n"] == 0).any() else ""


def _one(rows: pd.DataFrame, column: str) -> str:
    values = sorted(map(str, rows[column].dropna().unique()))
    return values[0] if len(values) == 1 else ", ".join(values)


def plot_per_model(run_dir: Path, name: str = "sllm_loading") -> list[Path]:
    """``<name>.png``: median load time per model per loader, one panel per cache state, one shared y axis."""
    rows = _summary(run_dir)
    if not (rows["n"] > 0).any():
        return []
    trials = style.read_table(run_dir, "trials")
    sizes = rows.groupby("model")["bytes"].median()
    rows["model_size"] = rows["model"].map(lambda m: f"{m}\n{style.fmt_bytes(sizes[m])}")
    if rows["dtype"].nunique() > 1:
        rows["model_size"] = rows["model_size"] + " " + rows["dtype"]
    order = list(dict.fromkeys(rows.sort_values("bytes")["model_size"]))
    loaders = sorted(rows["loader"].unique())
    cache_states = states(rows)
    fig, axes = style.figure(1, len(cache_states), width=2.2 + 2.6 * len(cache_states) + 0.4 * len(order), height=3.6,
                             sharey=True)
    panels = list(axes[0])
    plotted, note = time_panels(panels, rows, "model_size", "loader", "load_s", trials, order=order,
                                hue_order=loaders, ceilings=True)
    style.log_if_wide(panels, [*plotted["load_s_median"], *plotted["err_hi"]])
    panels[0].set_ylabel("median load time (s)")
    fig.supxlabel("model, checkpoint size", fontsize=10)
    fig.suptitle(f"Load time per model and loader ({_one(rows, 'device')}, {_one(rows, 'dtype')})")
    style.legend_outside(fig, panels, title="loader",
                         notes=[style.n_note(rows["n"]), note, CEILING_NOTE, _na_note(rows)])
    return style.save(fig, run_dir / name, plotted)


def plot_calibrate(run_dir: Path) -> list[Path]:
    """``calibrate.png``: the per-model figure of the calibration run."""
    return plot_per_model(run_dir, "calibrate")


def plot_ablation(run_dir: Path) -> list[Path]:
    """``sllm_ablation.png``: load time after each optimization is switched on, and the cumulative speedup."""
    gains = style.read_table(run_dir, "gains")
    if gains is None or gains.empty:
        return []
    rows = _summary(run_dir)
    steps = list(dict.fromkeys(gains.sort_values("step")["loader"]))
    rows = rows[rows["loader"].isin(steps)].copy()
    trials = style.read_table(run_dir, "trials")
    cache_states = states(rows)
    fig, axes = style.figure(1, len(cache_states) + 1, width=3.0 * len(cache_states) + 4.2, height=3.8)
    panels = list(axes[0][:-1])
    for ax in panels[1:]:
        ax.sharey(panels[0])
    plotted, note = time_panels(panels, rows, "loader", "loader", "load_s", trials, order=steps,
                                hue_order=steps, ceilings=True)
    style.log_if_wide(panels, [*plotted["load_s_median"], *plotted["err_hi"]])
    panels[0].set_ylabel("median load time (s)")
    for ax in panels:
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    speed = axes[0][-1]
    for state in cache_states:
        g = gains[gains["cache_state"] == state].sort_values("step")
        speed.plot(g["step"], g["speedup_vs_start"], marker="o", color=style.color(state), label=f"{state} cache")
    speed.axhline(1.0, color="0.5", linewidth=0.8)
    style.log_if_wide([speed], gains["speedup_vs_start"], ratio=10)
    speed.set_xticks(range(len(steps)), steps, rotation=40, ha="right", fontsize=8)
    speed.set_ylabel(style.label("speedup_vs_start"))
    speed.set_title("cumulative speedup")
    fig.suptitle(f"Native loader, optimizations switched on one by one ({_one(rows, 'model')} "
                 f"{_one(rows, 'dtype')}, {_one(rows, 'device')})")
    style.legend_outside(fig, [*panels, speed], notes=[style.n_note(rows["n"]), note, CEILING_NOTE, _na_note(rows)])
    return style.save(fig, run_dir / "sllm_ablation", plotted)


def plot_dtype_coldstart(run_dir: Path) -> list[Path]:
    """``dtype_coldstart.png``: median cold start (spawn → first token) and load time per dtype and loader, one
    panel per cache state (each bar is exactly one summary row), and checkpoint bytes per dtype."""
    rows = _summary(run_dir)
    if not (rows["n"] > 0).any():
        return []
    trials = style.read_table(run_dir, "trials")
    order = list(dict.fromkeys(rows["dtype"]))
    loaders = sorted(rows["loader"].unique())
    cache_states = states(rows)
    fig, axes = style.figure(2, len(cache_states) + 1, width=3.0 * len(cache_states) + 4.6, height=6.4)
    frames, notes = [], []
    for r, metric in enumerate(("cold_start_s", "load_s")):
        panels = list(axes[r][:-1])
        for ax in panels[1:]:
            ax.sharey(panels[0])
        plotted, note = time_panels(panels, rows, "dtype", "loader", metric, trials, order=order,
                                    hue_order=loaders, ceilings=metric == "load_s")
        if metric == "load_s":
            style.log_if_wide(panels, [*plotted[f"{metric}_median"], *plotted["err_hi"]])
        panels[0].set_ylabel(f"median {style.label(metric)}")
        for ax, state in zip(panels, cache_states, strict=False):
            ax.set_title(f"{'cold start' if metric == 'cold_start_s' else 'load time'}, {state} cache")
        frames.append(plotted.rename(columns={f"{metric}_median": "value"}).assign(column=f"{metric}_median"))
        notes.append(f"{'cold start' if metric == 'cold_start_s' else 'load time'}: {note}")
    sizes = rows[rows["n"] > 0].groupby("dtype")["bytes"].median().reindex(order)
    unit, scale = ("GB", 1e9) if sizes.max() >= 1e8 else ("MB", 1e6)
    size_ax = axes[0][-1]
    size_ax.bar(order, sizes.to_numpy() / scale, color="0.55")
    size_ax.set_ylabel(f"checkpoint size ({unit})")
    size_ax.set_title("checkpoint size per dtype")
    axes[1][-1].set_axis_off()
    frames.append(pd.DataFrame({"dtype": order, "value": sizes.to_numpy(), "column": "bytes",
                                "err_lo": np.nan, "err_hi": np.nan, "n": np.nan}))
    fig.suptitle(f"Cold start and load time per dtype, {_one(rows, 'model')} on {_one(rows, 'device')}")
    style.legend_outside(fig, list(axes.ravel()), title="loader",
                         notes=[style.n_note(rows["n"]), *notes, CEILING_NOTE, _na_note(rows)])
    return style.save(fig, run_dir / "dtype_coldstart", pd.concat(frames, ignore_index=True))
