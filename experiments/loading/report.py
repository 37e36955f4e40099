"""``coldstart-report PATH…``: aggregate runs and multirun sweeps into one table and figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

from experiments.loading.metrics import CELL_KEYS, summarize_trials
from experiments.loading.plots import plot_report


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run directory (one holding trials.parquet) under the given paths."""
    runs: list[Path] = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "trials.parquet").exists():
            runs.append(p)
        runs.extend(sorted(q.parent for q in p.rglob("trials.parquet") if q.parent != p))
    return sorted(set(runs))


def _overrides(run: Path) -> str:
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    return " ".join(yaml.safe_load(path.read_text()) or [])


def aggregate(paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(all trials with a ``run`` and ``overrides`` column, one summary row per cell over all runs)."""
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no trials.parquet under {', '.join(map(str, paths))}")
    frames = []
    for run in runs:
        df = pd.read_parquet(run / "trials.parquet")
        df["run"] = str(run)
        df["overrides"] = _overrides(run)
        frames.append(df)
    trials = pd.concat(frames, ignore_index=True)
    return trials, summarize_trials(trials, CELL_KEYS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coldstart-report", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <first path>/report)")
    parser.add_argument("--sllm-reference", action="store_true",
                        help="also write sllm_comparison.csv: our loaders beside sllm-store's published results")
    args = parser.parse_args(argv)
    try:
        trials, summary = aggregate(args.paths)
    except FileNotFoundError as exc:
        print(f"coldstart-report: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(out / "trials.parquet", index=False)
    summary.to_csv(out / "report.csv", index=False)
    plot_report(summary, out / "report.png")
    cols = [c for c in [*CELL_KEYS, "n", "status", "load_s_median", "throughput_gbps_median",
                        "ceiling_fraction_median", "cold_start_s_median"] if c in summary]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[cols].to_string(index=False))
    print(f"\n{len(trials)} trials from {trials['run'].nunique()} runs → {out}/report.csv, {out}/report.png")
    if args.sllm_reference:
        from experiments.loading.reference import (
            sllm_comparison,  # builds zoo models for their byte counts: only when asked
        )

        comparison = sllm_comparison(trials)
        comparison.to_csv(out / "sllm_comparison.csv", index=False)
        cols = ["source", "model", "cache_state", "loader", "load_s", "throughput_gbps", "speedup_vs_safetensors",
                "speedup_vs_torch", "ceiling_name", "ceiling_fraction"]
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
            print("\n" + comparison[cols].to_string(index=False))
        print(f"sllm-store comparison → {out}/sllm_comparison.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
