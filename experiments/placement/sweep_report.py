"""Figs 7–10 of Sun et al.: gather the ``summary.csv`` of a placement multirun and plot a metric vs the axis.

Run: ``python -m experiments.placement.sweep_report results/sweeps/bprr_scattered/<stamp> [--axis num_servers]``.
It reads files only (collect, then present) and writes ``sweep_summary.csv`` and ``sweep_<axis>.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

# The paper's sweep axes in the order they are guessed when --axis is not given (|R| last: under
# design_concurrency=auto it varies with λ and l_max even when nothing else is swept).
AXES = ("num_servers", "a100_share", "arrival_rate_per_s", "max_tokens", "design_concurrency")
AXIS_LABELS = {"num_servers": "servers C", "a100_share": "A100 share η", "arrival_rate_per_s": "λ (1/s)",
               "max_tokens": "l_max", "design_concurrency": "design concurrency |R|"}


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


def plot_sweep(summary: pd.DataFrame, axis: str, out: Path, metric: str = "per_token_s_mean") -> Path:
    """``metric`` vs ``axis``, one line per policy, one panel per scenario (topology or client cluster)."""
    for key in (axis, metric):
        if key not in summary.columns:
            raise ValueError(f"axis/metric={key!r} is not a summary column; allowed: {sorted(summary.columns)}")
    grid = sns.relplot(data=summary, x=axis, y=metric, hue="policy", style="policy", col="scenario",
                       kind="line", marker="o", errorbar=None, height=3.5, aspect=1.1,
                       facet_kws={"sharey": False})
    grid.set_axis_labels(AXIS_LABELS.get(axis, axis), "average time per token (s)"
                         if metric == "per_token_s_mean" else metric)
    path = out / f"sweep_{axis}.png"
    grid.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    return path


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
        png = plot_sweep(summary, axis, out, args.metric)
    except (FileNotFoundError, ValueError) as exc:
        print(f"sweep_report: {exc}", file=sys.stderr)
        return 2
    print(f"{out / 'sweep_summary.csv'}\n{png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
