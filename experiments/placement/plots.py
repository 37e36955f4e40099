"""Figures for the placement experiments, read back from a run directory (never from live objects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from experiments import style

# Columns that tell the cells of a placement grid apart, with their tick-label prefix.
CELL_KEYS = {"scenario": "", "client_group": "c", "num_servers": "C=", "a100_share": "η=",
             "arrival_rate_per_s": "λ=", "max_tokens": "l="}
CELL_COLUMNS = list(CELL_KEYS)
SERIES = {"petals_per_token_s": "petals", "proposed_per_token_s": "proposed",
          "paper_petals_per_token_s": "paper petals", "paper_proposed_per_token_s": "paper proposed"}


def cell_labels(df: pd.DataFrame) -> pd.Series:
    """"c0\\nλ=0.1\\nl=64": the cell columns that vary in ``df`` (scenario or client cluster, not both)."""
    keys = [k for k in CELL_KEYS if k in df.columns and df[k].nunique() > 1]
    if "scenario" in keys and "client_group" in keys:
        keys.remove("client_group")
    keys = keys or [k for k in ("scenario",) if k in df.columns]
    return df[keys].astype(str).apply(lambda r: "\n".join(CELL_KEYS[k] + r[k] for k in keys), axis=1) \
        if keys else pd.Series("all", index=df.index)


def _run_spread(summary: pd.DataFrame, requests: pd.DataFrame | None) -> tuple[pd.Series, pd.Series, str]:
    """IQR over Monte Carlo runs of each run's mean per-token time (the bar is the mean over all requests)."""
    nan = pd.Series(np.nan, index=summary.index)
    if requests is None or "run" not in requests.columns:
        return nan, nan, "no error bars: requests.parquet (per-run values) is not in the run dir"
    keys = [k for k in ("policy", *CELL_COLUMNS, "allocation_delays") if k in requests.columns
            and k in summary.columns]
    per_run = requests.groupby([*keys, "run"])["per_token_s"].mean().reset_index()
    q = per_run.groupby(keys)["per_token_s"].quantile(np.array([0.25, 0.75])).unstack().reset_index()
    q.columns = [*keys, "q25", "q75"]
    merged = summary[keys].merge(q, on=keys, how="left")
    return (pd.Series(merged["q25"].to_numpy(), index=summary.index),
            pd.Series(merged["q75"].to_numpy(), index=summary.index),
            "error bars: IQR over Monte Carlo runs of each run's mean")


def per_token_figure(summary: pd.DataFrame, requests: pd.DataFrame | None, path: Path) -> list[Path]:
    """Mean per-token time per policy and cell (= ``per_token_s_mean`` of summary.csv), one row of panels per
    allocation-delay mode, one shared y axis."""
    rows = summary.copy()
    rows["cell"] = cell_labels(rows)
    lo, hi, note = _run_spread(rows, requests)
    modes = sorted(rows["allocation_delays"].astype(bool).unique()) if "allocation_delays" in rows.columns \
        else [None]
    order = list(dict.fromkeys(rows["cell"]))
    policies = list(dict.fromkeys(rows["policy"]))
    fig, axes = style.figure(len(modes), 1, width=2.5 + 0.33 * len(order) * len(policies) + 1.2,
                             height=0.6 + 2.9 * len(modes), sharey=True, sharex=True)
    frames = []
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        part = rows if mode is None else rows[rows["allocation_delays"].astype(bool) == mode]
        plotted = style.bars(ax, part, "cell", "policy", "per_token_s_mean", lo=lo.loc[part.index],
                             hi=hi.loc[part.index], n="runs", order=order, hue_order=policies)
        frames.append(plotted.assign(allocation_delays=mode))
        if mode is not None:
            ax.set_title(f"{style.label('allocation_delays')} {'on' if mode else 'off'}")
        ax.set_ylabel(style.label("per_token_s_mean"))
    plotted = pd.concat(frames, ignore_index=True)
    style.log_if_wide(axes[:, 0], [*plotted["per_token_s_mean"], *plotted["err_hi"]])
    fig.supxlabel("cell", fontsize=10)
    fig.suptitle("Average time per token per policy and cell")
    requests_per = summary["requests"] if "requests" in summary.columns else pd.Series(dtype=float)
    style.legend_outside(fig, axes[:, 0], title="policy",
                         notes=[style.n_note(rows["runs"], "Monte Carlo runs") if "runs" in rows.columns else "",
                                f"({int(requests_per.max())} requests per bar in all)" if len(requests_per) else "",
                                note])
    return style.save(fig, path, plotted)


def table3_figure(table: pd.DataFrame, path: Path) -> list[Path]:
    """Table III: our mean per-token time (allocation delays off when run) beside the paper's, per cell."""
    delays_off = ~table["allocation_delays"].astype(bool)
    t = table[delays_off] if delays_off.any() else table
    mode = "off" if delays_off.any() else "on"
    t = t.assign(cell=cell_labels(t))
    long = t.melt(id_vars="cell", value_vars=list(SERIES), var_name="column", value_name="per_token_s")
    long["series"] = long["column"].map(SERIES)
    order = list(dict.fromkeys(t["cell"]))
    fig, axes = style.figure(1, 1, width=2.5 + 0.6 * len(order) + 1.5, height=3.6)
    ax = axes[0][0]
    plotted = style.bars(ax, long, "cell", "series", "per_token_s", order=order, hue_order=list(SERIES.values()),
                         hatch={"paper petals": "//", "paper proposed": "//"})
    ax.set_ylabel(style.label("per_token_s_mean"))
    ax.set_xlabel("cell (client cluster, λ, l_max)")
    ax.set_title(f"Table III: ours (allocation delays {mode}) beside the paper's")
    style.legend_outside(fig, [ax], title="series",
                         notes=["proposed = cg_bp+ws_rr; ours: mean over all requests of all runs",
                                "hatched: the paper's published values"])
    return style.save(fig, path, plotted)


def plot_bprr(run_dir: Path) -> list[Path]:
    """``per_token_s``: per-token time by policy and cell (summary.csv, IQR over runs from requests.parquet);
    ``table3``: ours vs paper (table3.parquet or .csv)."""
    out: list[Path] = []
    summary_path = run_dir / "summary.csv"
    if summary_path.exists() and summary_path.stat().st_size > 1:  # a grid where every policy failed: no columns
        summary = pd.read_csv(summary_path)
        if len(summary):
            out += per_token_figure(summary, style.read_table(run_dir, "requests"), run_dir / "per_token_s")
    table = style.read_table(run_dir, "table3")
    if table is not None and len(table):
        out += table3_figure(table, run_dir / "table3")
    return out


def plot_optimality(run_dir: Path) -> list[Path]:
    """ECDF of CG-BPRR's relative gap to the MILP optimum over the random instances both solved."""
    df = style.read_table(run_dir, "instances")
    if df is None:
        return []
    gaps = df["gap_pct"].dropna().sort_values()
    if gaps.empty:
        return []
    fig, axes = style.figure(1, 1, width=6.0, height=3.4)
    ax = axes[0][0]
    y = np.arange(1, len(gaps) + 1) / len(gaps)
    ax.step(gaps.to_numpy(), y, where="post", color=style.color("cg_bp+ws_rr"), label="cg_bp+ws_rr vs milp")
    ax.plot(gaps.to_numpy(), y, "o", markersize=3, color=style.color("cg_bp+ws_rr"))
    ax.set_xlabel(style.label("gap_pct"))
    ax.set_ylabel("fraction of instances")
    ax.set_xlim(left=min(-0.5, gaps.min()))
    ax.set_title("CG-BPRR vs the exact MILP")
    style.legend_outside(fig, [ax], notes=[f"n = {len(gaps)} instances solved by both (of {len(df)})"])
    return style.save(fig, run_dir / "optimality_gap", pd.DataFrame({"gap_pct": gaps.to_numpy(),
                                                                      "fraction": y}))
