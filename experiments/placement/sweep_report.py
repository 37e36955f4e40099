"""Figs 7–10 of Sun et al.: gather the ``summary.csv`` of a placement multirun and plot a metric vs the axis.

Run: ``python -m experiments.placement.sweep_report results/sweeps/bprr_scattered/<stamp> [--axis num_servers]``.
It reads files only (collect, then present) and writes ``sweep_summary.csv`` and ``sweep_<axis>.png``/``.pdf``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from experiments import style

# The paper's sweep axes in the order they are guessed when --axis is not given (|R| last: under
# design_concurrency=auto it varies with λ and l_max even when nothing else is swept).
AXES = ("num_servers", "a100_share", "arrival_rate_per_s", "max_tokens", "design_concurrency")


def collect(paths: list[Path]) -> pd.DataFrame:
    """Every placement ``summary.csv`` under ``paths`` (one per sweep job), with a ``job`` column."""
    frames = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        for csv in sorted([root / "summary.csv", *root.rglob("*/summary.csv")]):
            if not csv.exists():
                continue
            df = pd.read_csv(csv)
            if "per_token_s_mean" not in df.columns or "policy" not in df.columns:
                continue  # not a placement run
            df["job"] = csv.parent.name
            frames.append(df)
    if not frames:
        raise FileNotFoundError(f"no placement summary.csv under {', '.join(map(str, paths))}")
    return pd.concat(frames, ignore_index=True).drop_duplicates()


def guess_axis(summary: pd.DataFrame) -> str:
    """The first of AXES that takes more than one value across the jobs."""
    for axis in AXES:
        if axis in summary.columns and summary[axis].nunique() > 1:
            return axis
    raise ValueError(f"no swept axis found: each of {', '.join(AXES)} has one value; pass --axis")


def plot_sweep(summary: pd.DataFrame, axis: str, out: Path, metric: str = "per_token_s_mean") -> list[Path]:
    """``metric`` vs ``axis``, one line per policy, one panel per scenario (topology or client cluster), one
    shared y axis; a point averages the rows of its (scenario, policy, axis value), and the legend says how many.
    Writes ``sweep_<axis>.png``/``.pdf`` (and ``.plotted.csv``) under ``out``."""
    for key in (axis, metric):
        if key not in summary.columns:
            raise ValueError(f"axis/metric={key!r} is not a summary column; allowed: {sorted(summary.columns)}")
    scenarios = list(dict.fromkeys(summary["scenario"])) if "scenario" in summary.columns else [None]
    points = (summary.assign(scenario=summary.get("scenario", "all"))
              .groupby(["scenario", "policy", axis], sort=False)[metric].agg(["mean", "count"]).reset_index()
              .rename(columns={"mean": metric, "count": "rows"}))
    fig, axes = style.figure(1, len(scenarios), width=1.8 + 2.9 * len(scenarios), height=3.3, sharey=True)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        part = points[points["scenario"] == (scenario if scenario is not None else "all")]
        for policy, rows in part.groupby("policy", sort=False):
            rows = rows.sort_values(axis)
            ax.plot(rows[axis], rows[metric], marker="o", color=style.color(policy), label=str(policy))
        if scenario is not None:
            ax.set_title(str(scenario))
        ax.set_xlabel(style.label(axis))
    style.log_if_wide(axes[0], points[metric])
    axes[0][0].set_ylabel(style.label(metric))
    notes = []
    if {"runs", "requests"} <= set(summary.columns):
        notes.append(f"each job: {summary['requests'].max() // max(summary['runs'].max(), 1)} requests × "
                     f"{summary['runs'].max()} Monte Carlo runs")
    if points["rows"].max() > 1:
        varying = [k for k in ("client_group", "arrival_rate_per_s", "max_tokens", "num_servers", "a100_share")
                   if k != axis and k in summary.columns and summary.groupby("scenario")[k].nunique().max() > 1]
        lo, hi = points["rows"].min(), points["rows"].max()
        notes.append(f"each point: mean over {lo if lo == hi else f'{lo}–{hi}'} rows"
                     + (f" (cells of {', '.join(style.label(k) for k in varying)})" if varying else ""))
    style.legend_outside(fig, axes[0], title="policy", notes=notes)
    return style.save(fig, out / f"sweep_{axis}", points)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.placement.sweep_report", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep (multirun) or run directories")
    parser.add_argument("--axis", default=None, help=f"x axis, one of {', '.join(AXES)} (default: guessed)")
    parser.add_argument("--metric", default="per_token_s_mean")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: first path)")
    args = parser.parse_args(argv)
    try:
        summary = collect(args.paths)
        axis = args.axis or guess_axis(summary)
        out = args.out or args.paths[0]
        out.mkdir(parents=True, exist_ok=True)
        keys = [k for k in ("policy", "scenario", axis) if k in summary.columns]
        summary.sort_values(keys).to_csv(out / "sweep_summary.csv", index=False)
        figures = plot_sweep(summary, axis, out, args.metric)
    except (FileNotFoundError, ValueError) as exc:
        print(f"sweep_report: {exc}", file=sys.stderr)
        return 2
    print("\n".join(map(str, [out / "sweep_summary.csv", *figures])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
