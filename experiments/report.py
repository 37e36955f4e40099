"""``coldstart-report PATH…``: one table and figure for the runs and multirun sweeps of any experiment.

Rows are grouped by every configuration key whose value differs between the jobs (read from each job's resolved
``config.yaml``) plus the experiment's own cell keys, so two jobs whose configurations differ are never merged. For
the loading experiments, trials of jobs with identical configurations are pooled and summarized again; for the
others each job's summary rows are kept, with the differing keys as columns. The same report is written at the end
of every multirun (``ReportCallback``, registered in ``conf/config.yaml``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments import style
from experiments.loading.metrics import CELL_KEYS, summarize_trials

log = logging.getLogger("coldstart.report")

# Keys that never change what was measured: where files go, how much is printed, what is logged or reported.
BOOKKEEPING = ("results_dir", "progress", "logger", "experiment.console", "experiment.objective",
               "experiment.cells", "experiment.plot", "hydra")
REPORT_DIR = "report"


def find_jobs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory (one holding ``summary.csv`` or ``trials.parquet``) under the given paths."""
    jobs: set[Path] = set()
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        for marker in ("summary.csv", "trials.parquet"):
            jobs.update(q.parent for q in p.rglob(marker) if REPORT_DIR not in q.relative_to(p).parts[:-1])
    return sorted(jobs)


def flat_config(job: Path) -> dict[str, Any]:
    """The job's resolved ``config.yaml`` as dotted keys (lists as their text); empty when it has none."""
    path = job / "config.yaml"
    if not path.exists():
        return {}
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = str(node) if isinstance(node, list | dict) else node

    walk(yaml.safe_load(path.read_text()) or {}, "")
    return {k: v for k, v in out.items() if not any(k == b or k.startswith(b + ".") for b in BOOKKEEPING)}


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Keys whose value is not the same in every job (a key missing from a job counts as a different value)."""
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({repr(c.get(k, "<absent>")) for c in configs}) > 1]


def aggregate(paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(all trials or request-less rows with ``job`` and the differing keys, the report table, the differing keys)."""
    jobs = find_jobs(paths)
    if not jobs:
        raise FileNotFoundError(f"no summary.csv or trials.parquet under {', '.join(map(str, paths))}")
    configs = [flat_config(j) for j in jobs]
    keys = differing_keys(configs)
    loading = all((j / "trials.parquet").exists() for j in jobs)
    frames = []
    for job, cfg in zip(jobs, configs, strict=True):
        df = pd.read_parquet(job / "trials.parquet") if loading else pd.read_csv(job / "summary.csv")
        if loading and "load_s" not in df:
            loading = False
            df = pd.read_csv(job / "summary.csv")
        df = df.assign(job=str(job), **{k: cfg.get(k) for k in keys})
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    if loading:  # pool trials of identical configurations, never across configurations that differ
        report = summarize_trials(rows, [*keys, *CELL_KEYS])
    else:
        report = rows[[*keys, *[c for c in rows.columns if c not in keys]]]
    return rows, report, keys


def _first_varying(df: pd.DataFrame, candidates: Iterable[str]) -> str | None:
    return next((c for c in candidates if c in df and df[c].nunique(dropna=False) > 1), None)


def plot(report: pd.DataFrame, keys: list[str], metric: str, cells: list[str], path: Path,
         jobs: int) -> Path | None:
    """``metric`` against the first differing key (or the cells when nothing differs), one colour per value of the
    next varying cell key; bars are medians over the rows of a group, whiskers their IQR, n noted in the legend."""
    if metric not in report:
        return None
    data = report.dropna(subset=[metric]).copy()
    if data.empty:
        return None
    x = _first_varying(data, keys) or _first_varying(data, cells) or (cells[0] if cells and cells[0] in data else None)
    if x is None:
        return None
    hue = _first_varying(data, [c for c in [*cells, *keys] if c != x])
    data[x] = data[x].astype(str)
    groups = [x, hue] if hue else [x]
    rows = data.groupby(groups, sort=True)[metric].agg(
        median="median", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75), n="size").reset_index()
    fig, axes = style.figure(width=7.5, height=3.6)
    ax = axes[0, 0]
    xs = list(dict.fromkeys(rows[x]))
    hues = list(dict.fromkeys(rows[hue])) if hue else [None]
    width = 0.8 / len(hues)
    for k, h in enumerate(hues):
        part = rows[rows[hue] == h] if hue else rows
        pos = [xs.index(v) + (k - (len(hues) - 1) / 2) * width for v in part[x]]
        ax.bar(pos, part["median"], width=width, color=style.color(h if hue else metric), label=str(h) if hue
               else None, yerr=[part["median"] - part["q25"], part["q75"] - part["median"]], capsize=2)
    ax.set_xticks(range(len(xs)), xs, rotation=30 if max(len(v) for v in xs) > 8 else 0, ha="right"
                  if max(len(v) for v in xs) > 8 else "center")
    ax.set_xlabel(style.label(x))
    ax.set_ylabel(style.label(metric))
    style.legend_outside(fig, [ax], title=style.label(hue) if hue else None,
                         notes=[f"bars: median over each group's rows, whiskers IQR; {style.n_note(rows['n'], 'rows')}"
                                f", {jobs} job{'s' if jobs != 1 else ''}"])
    return style.save(fig, path, rows)[0]


def write_report(paths: list[Path], out: Path, sllm_reference: bool = False) -> pd.DataFrame:
    """Aggregate ``paths`` into ``out``: report.csv, report.parquet, rows.parquet and report.png (+ .pdf)."""
    rows, report, keys = aggregate(paths)
    out.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out / "rows.parquet", index=False)
    report.to_parquet(out / "report.parquet", index=False)
    report.to_csv(out / "report.csv", index=False)
    first = Path(sorted(set(rows["job"]))[0]) / "config.yaml"
    experiment = (yaml.safe_load(first.read_text()) or {}).get("experiment", {}) if first.exists() else {}
    objective = (experiment.get("objective") or {}).get("column")
    cells = [str(c) for c in experiment.get("cells") or []]
    metric = str(objective) if objective and objective in report else \
        "load_s_median" if "load_s_median" in report else \
        next((c for c in report.columns if pd.api.types.is_float_dtype(report[c])), "")
    plot(report, keys, metric, cells or [c for c in CELL_KEYS if c in report], out / "report.png",
         rows["job"].nunique())
    if sllm_reference:
        from experiments.loading.reference import sllm_comparison  # builds zoo models for byte counts: when asked

        sllm_comparison(rows.rename(columns={"job": "run"})).to_csv(out / "sllm_comparison.csv", index=False)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coldstart-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default: <first path>/{REPORT_DIR})")
    parser.add_argument("--sllm-reference", action="store_true",
                        help="also write sllm_comparison.csv: our loaders beside sllm-store's published results")
    args = parser.parse_args(argv)
    out = args.out or args.paths[0] / REPORT_DIR
    try:
        report = write_report(args.paths, out, args.sllm_reference)
    except FileNotFoundError as exc:
        print(f"coldstart-report: {exc}", file=sys.stderr)
        return 2
    from harness.summary import console_table

    print(console_table(report, source="report.csv"))
    print(f"\n{len(report)} rows → {out}/report.csv, {out}/report.png")
    return 0


class ReportCallback(Callback):
    """Hydra callback: the report of a multirun, written to ``<sweep dir>/report`` when the sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            write_report([sweep], sweep / REPORT_DIR)
            log.info("sweep report: %s", sweep / REPORT_DIR / "report.csv")
        except Exception as exc:  # a report must never turn a finished sweep into a failure
            log.error("no sweep report for %s: %s", sweep, exc)


if __name__ == "__main__":
    raise SystemExit(main())
