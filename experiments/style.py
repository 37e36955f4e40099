"""One look for every figure: a fixed colour per loader/policy, labels with units, IQR bars, ceilings, PNG + PDF."""

from __future__ import annotations

import logging
import re
import textwrap
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# A name keeps its colour in every figure (a loader, a policy, a mode, a cache state, a phase). Names from
# different families may share a colour: they never share a figure.
PALETTE: dict[str, str] = {
    # loaders (conf/loader)
    "torch": "#4C72B0", "torch_mmap": "#8172B3", "safetensors": "#DD8452", "hf": "#937860",
    "native": "#C44E52", "runai": "#55A868", "fastsafetensors": "#DA8BC3", "tensorizer": "#8C8C8C",
    # serverless schedulers (conf/scheduler) and baselines of sllm_e2e
    "serverlessllm": "#C44E52", "serverless": "#4C72B0", "shepherd": "#55A868", "locality": "#8172B3",
    "ray_serve": "#DD8452", "ray_serve_ssd": "#CCB974", "kserve": "#64B5CD", "serverlessllm_released": "#937860",
    # keep-alive (conf/keepalive); fixed_<N>s get a shade of blue by N, see color()
    "hybrid_histogram": "#C44E52",
    # placement + routing policies (conf/placement, conf/routing) and Table III's series
    "petals": "#4C72B0", "cg_bp+ws_rr": "#C44E52", "opt_order+ws_rr": "#DD8452", "opt_num+ws_rr": "#55A868",
    "milp": "#8172B3", "proposed": "#C44E52", "paper petals": "#A6BDDB", "paper proposed": "#F4A6A6",
    # real run vs its simulation
    "real": "#333333", "sim": "#DD8452", "sim_in_situ": "#55A868", "sim_contended": "#8172B3",
    # page-cache states of a loading trial
    "cold": "#4C72B0", "warm": "#DD8452", "hot": "#C44E52",
    # runtimes of a cold start (conf/runtime)
    "fresh": "#7F7F7F", "forkserver": "#DA8BC3", "pool": "#64B5CD",
    # phases of a loading cold start and of a serverless cold start
    "t_handoff_s": "#B7B7E0", "t_imports_s": "#8C8C8C", "t_device_init_s": "#CCB974", "t_weights_s": "#C44E52",
    "t_model_build_s": "#4C72B0", "t_kv_alloc_s": "#DA8BC3", "t_compile_s": "#DD8452",
    "t_graph_capture_s": "#8172B3", "t_first_token_s": "#55A868", "t_download_s": "#64B5CD", "t_other_s": "#DDDDDD",
    # engines (conf/engine) and compile-cache states
    "eager": "#7F7F7F", "compiled": "#DD8452", "graphs": "#8172B3",
    "queue_s": "#8C8C8C", "migration_s": "#CCB974", "load_s": "#C44E52", "prefill_s": "#55A868",
}
# The native loader's ablation ladder (conf/experiment/sllm_ablation.yaml): one hue, darker per step.
ABLATION_STEPS = ("per_tensor_reads", "+bulk_reads", "+direct_io", "+threads", "+pinned_buffers", "+pipelining",
                  "+all")
PALETTE.update({step: to_hex(plt.get_cmap("Reds")(0.3 + 0.65 * k / (len(ABLATION_STEPS) - 1)))
                for k, step in enumerate(ABLATION_STEPS)})
# How much lighter a name's colour is on each runtime when several are compared ("serverlessllm · pool").
VARIANT_SHADES: dict[str, float] = {"fresh": 0.0, "forkserver": 0.3, "pool": 0.5}
# Unknown names draw from here by a hash of the name (crc32: the same colour in every process and run).
FALLBACK = tuple(to_hex(plt.get_cmap(name)(k)) for name in ("tab20", "tab20b") for k in range(20))

# Column → axis or legend label, with its unit. Keys are table columns (see each experiment's metrics).
LABELS: dict[str, str] = {
    "load_s": "load time (s)", "cold_start_s": "cold start, spawn → first token (s)",
    "throughput_gbps": "throughput (GB/s)", "ceiling_gbps": "ceiling (GB/s)", "bytes": "checkpoint size (GB)",
    "t_handoff_s": "hand-off: a ready process (s)", "t_imports_s": "imports (s)",
    "t_device_init_s": "device init (s)", "t_weights_s": "weights (s)",
    "t_model_build_s": "model build (s)", "t_kv_alloc_s": "KV-cache allocation (s)",
    "t_compile_s": "compile (s)", "t_graph_capture_s": "CUDA-graph capture (s)", "t_first_token_s": "first token (s)",
    "tpot_s": "time per output token, median (s)", "engine": "engine", "compile_cache": "compile cache",
    "t_download_s": "download from remote (s)", "t_other_s": "RPCs and waits of the load call (s)",
    "speedup_vs_start": "speedup over the first step (×)",
    "ttft_s": "time to first token (s)", "e2e_s": "end-to-end latency (s)",
    "queue_s": "loading-queue wait (s)", "migration_s": "migration wait (s)",
    "prefill_s": "prefill and first token (s)",
    "rps": "request rate (req/s)", "cold_start_rate": "cold-start rate (fraction of requests)",
    "idle_gpu_gb_s": "idle GPU memory-time (GB·s)", "tokens": "token mix",
    "per_token_s": "time per token (s)", "wait_s": "wait for a route (s)", "hop_ms": "decode hop time (ms)",
    "allocation_delays": "allocation delays", "num_servers": "servers C", "a100_share": "A100 share η",
    "arrival_rate_per_s": "arrival rate λ (req/s)", "max_tokens": "max output tokens l_max",
    "design_concurrency": "design concurrency |R|", "client_group": "client cluster",
    "gap_pct": "CG-BPRR objective above the MILP optimum (%)",
    "loader": "loader", "policy": "policy", "cache_state": "cache state", "dtype": "dtype", "model": "model",
    "mode": "mode", "scenario": "scenario", "step": "step",
}
_STATS = {"median": "median", "mean": "mean", "p50": "P50", "p95": "P95", "p99": "P99", "iqr": "IQR of"}
_UNITS = {"_s": "s", "_ms": "ms", "_gbps": "GB/s", "_bytes": "bytes", "_pct": "%", "_gb_s": "GB·s"}

NOTE_SIZE = 8


# PDF output subsets fonts through fontTools, which logs every table it prunes at INFO: not the run's business.
logging.getLogger("fontTools").setLevel(logging.WARNING)


def apply() -> None:
    """Readable sizes for a figure printed at column width (call before creating a figure)."""
    plt.rcParams.update({
        "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
        "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11, "axes.grid": True,
        "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "pdf.fonttype": 42,
        "axes.axisbelow": True,
    })


def color(name: object) -> str:
    """The fixed colour of ``name``; unknown names get a stable one from FALLBACK."""
    key = str(name)
    if key in PALETTE:
        return PALETTE[key]
    if " · " in key:  # one name on one variant ("serverlessllm · pool"): the name's colour, lighter per variant
        base, variant = key.split(" · ", 1)
        lighter = VARIANT_SHADES.get(variant, 0.15 + 0.1 * (zlib.crc32(variant.encode()) % 5))
        r, g, b = (c + (1 - c) * lighter for c in to_rgb(color(base)))
        return to_hex((r, g, b))
    fixed = re.fullmatch(r"fixed_(\d+(?:\.\d+)?)s", key)  # keep-alive fixed_<N>s: darker blue for longer N
    if fixed:
        shade = min(np.log10(1 + float(fixed.group(1))) / np.log10(1 + 3600), 1.0)
        return to_hex(plt.get_cmap("Blues")(0.3 + 0.65 * shade))
    return FALLBACK[zlib.crc32(key.encode()) % len(FALLBACK)]


def label(column: str) -> str:
    """Human label with unit for a table column (``ttft_s_p99`` → "P99 time to first token (s)")."""
    if column in LABELS:
        return LABELS[column]
    base, _, stat = column.rpartition("_")
    if base and stat in _STATS:
        return f"{_STATS[stat]} {label(base)}"
    for suffix, unit in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if column.endswith(suffix):
            return f"{column[: -len(suffix)].replace('_', ' ')} ({unit})"
    return column.replace("_", " ")


def n_note(ns: Iterable[float], unit: str = "trials") -> str:
    """"n = 5 trials per bar", or the range when bars differ."""
    values = sorted({int(n) for n in ns if pd.notna(n) and n > 0})
    if not values:
        return ""
    span = f"{values[0]}" if len(values) == 1 else f"{values[0]}–{values[-1]}"
    return f"n = {span} {unit.removesuffix('s') if span == '1' else unit} per bar"


def fmt_bytes(size: float) -> str:
    """``2.63 GB``, ``344 kB``: a checkpoint size for a tick label."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale / 10:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def spread(rows: pd.DataFrame, metric: str, keys: Sequence[str], trials: pd.DataFrame | None = None,
           center: str | None = None) -> tuple[pd.Series, pd.Series, str]:
    """Lower and upper ends of an IQR error bar for each row of ``rows`` and a note saying what they are.

    Exact quartiles come from ``trials`` (one row per trial, column ``metric``) or from ``<metric>_q25/_q75``
    columns; a summary holding only ``<metric>_iqr`` gives a bar of that length centred on ``center``
    (the median); without any of these the bars are NaN.
    """
    nan = pd.Series(np.nan, index=rows.index)
    if trials is not None and metric in trials.columns and len(trials):
        ok = trials[trials["ok"].astype(bool)] if "ok" in trials.columns else trials
        q = ok.groupby(list(keys))[metric].quantile(np.array([0.25, 0.75])).unstack()
        q.columns = ["q25", "q75"]
        merged = rows[list(keys)].merge(q.reset_index(), on=list(keys), how="left")
        return (pd.Series(merged["q25"].to_numpy(), index=rows.index),
                pd.Series(merged["q75"].to_numpy(), index=rows.index), "error bars: IQR of the trials")
    if f"{metric}_q25" in rows.columns and f"{metric}_q75" in rows.columns:
        return rows[f"{metric}_q25"], rows[f"{metric}_q75"], "error bars: IQR"
    if f"{metric}_iqr" in rows.columns and center is not None:
        half = rows[f"{metric}_iqr"] / 2
        lo, hi = rows[center] - half, rows[center] + half
        if f"{metric}_min" in rows.columns and f"{metric}_max" in rows.columns:  # quartiles lie inside [min, max]
            lo, hi = lo.clip(lower=rows[f"{metric}_min"]), hi.clip(upper=rows[f"{metric}_max"])
        return lo, hi, "error bars: IQR long, centred on the median, cut at min/max (the table has no quartiles)"
    return nan, nan, "no spread in the table"


def bars(ax: Axes, rows: pd.DataFrame, x: str, hue: str, y: str, *, lo: pd.Series | None = None,
         hi: pd.Series | None = None, n: str | None = None, order: Sequence[object] | None = None,
         hue_order: Sequence[object] | None = None, hatch: dict[object, str] | None = None,
         width: float = 0.8) -> pd.DataFrame:
    """Grouped bars of ``y`` per ``x`` and ``hue`` in their fixed colours; returns exactly the plotted rows.

    ``lo``/``hi`` (aligned to ``rows``) draw error bars; rows with ``n`` = 0 or a NaN ``y`` get an "n/a" mark
    instead of a bar, and ``n`` is written above each bar when it differs between bars.
    """
    order = list(order) if order is not None else list(dict.fromkeys(rows[x]))
    hue_order = list(hue_order) if hue_order is not None else list(dict.fromkeys(rows[hue]))
    dodge = hue != x  # hue == x: one bar per x, coloured by its name
    step = width / max(len(hue_order), 1) if dodge else width
    uniform_n = n is None or rows.loc[rows[n] > 0, n].nunique() <= 1
    plotted = []
    for j, h in enumerate(hue_order):
        for i, xv in enumerate(order):
            match = rows[(rows[x] == xv) & (rows[hue] == h)]
            if match.empty:
                continue
            row = match.iloc[0]
            pos = i - width / 2 + step * (j + 0.5) if dodge else i
            count = row[n] if n is not None else np.nan
            if pd.isna(row[y]) or (n is not None and not count > 0):
                ax.text(pos, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=NOTE_SIZE - 1,
                        color="0.4", transform=ax.get_xaxis_transform())
                continue
            low = lo.loc[match.index[0]] if lo is not None else np.nan
            high = hi.loc[match.index[0]] if hi is not None else np.nan
            ax.bar(pos, row[y], width=step * 0.95, color=color(h), label=str(h),
                   hatch=(hatch or {}).get(h), edgecolor="white" if not hatch else "0.3", linewidth=0.5)
            if pd.notna(low) and pd.notna(high):
                ax.errorbar(pos, row[y], yerr=[[max(row[y] - low, 0)], [max(high - row[y], 0)]], fmt="none",
                            ecolor="0.15", elinewidth=0.9, capsize=2)
            if not uniform_n:
                top = high if pd.notna(high) else row[y]
                ax.annotate(f"n={int(count)}", (pos, top), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=NOTE_SIZE - 1)
            plotted.append({x: xv, hue: h, y: row[y], "err_lo": low, "err_hi": high, "n": count})
    ax.set_xticks(range(len(order)), [str(o) for o in order])
    ax.set_xlim(-0.6, len(order) - 0.4)
    return pd.DataFrame(plotted)


def ceiling(ax: Axes, value: float, x0: float | None = None, x1: float | None = None) -> None:
    """A dashed line at a ceiling (a throughput, or the time to move the bytes at it), across [x0, x1] or all."""
    if not np.isfinite(value) or value <= 0:
        return
    if x0 is None or x1 is None:
        ax.axhline(value, color="0.1", linestyle="--", linewidth=1.0, label="ceiling", zorder=3)
    else:
        ax.hlines(value, x0, x1, colors="0.1", linestyles="--", linewidth=1.0, label="ceiling", zorder=3)


def log_if_wide(axes: Iterable[Axes], values: Iterable[float], ratio: float = 30.0) -> bool:
    """One log y axis for all ``axes`` when the positive values span more than ``ratio``×, with a common floor."""
    v = np.array([x for x in values if pd.notna(x) and x > 0], dtype=float)
    if len(v) == 0 or v.max() / v.min() <= ratio:
        return False
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylim(v.min() / 3, v.max() * 2)
    return True


def legend_outside(fig: Figure, axes: Iterable[Axes], title: str | None = None,
                   notes: Sequence[str] = ()) -> None:
    """One legend for the whole figure, right of the panels (never over data); duplicates dropped.

    ``notes`` are rows without a mark under the entries: n, what the error bars are, which rows are plotted.
    """
    seen: dict[str, Artist] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if not text.startswith("_"):
                seen.setdefault(text, handle)
    lines = [t for t in seen if t == "ceiling"]  # reference lines after the series
    labels = [t for t in seen if t not in lines] + lines
    handles = [seen[t] for t in labels]
    for text in notes:
        if text:
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(textwrap.fill(text, 42))
    if handles:
        fig.legend(handles, labels, title=title, loc="outside right center", frameon=False)


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.5, height: float = 3.2, sharex: bool = False,
           sharey: bool = False) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure (room for an outside legend) with a 2-D array of axes."""
    apply()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False,
                             sharex=sharex, sharey=sharey)
    return fig, axes


def save(fig: Figure, path: Path, plotted: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (and ``<stem>.plotted.csv``: exactly the plotted rows)."""
    stem = path.with_suffix("") if path.suffix in (".png", ".pdf") else path
    out = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    fig.savefig(out[0], dpi=150, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    plt.close(fig)
    if plotted is not None:
        plotted.to_csv(stem.with_name(stem.name + ".plotted.csv"), index=False)
    return out


def read_table(run_dir: Path, name: str) -> pd.DataFrame | None:
    """``<name>.parquet`` as a run wrote it, else ``<name>.csv`` (the committed reference copies), else None."""
    for path, reader in ((run_dir / f"{name}.parquet", pd.read_parquet), (run_dir / f"{name}.csv", pd.read_csv)):
        if path.exists():
            return reader(path)
    return None
