"""``coldstart-report PATH…`` and ``coldstart-report compare A B``: tables and figures of runs and sweeps of any
experiment that never pool rows that do not belong together.

A report row is one cell: every configuration key whose value differs between the jobs (read from each job's
``config.yaml``) and every cell key of the experiment's rows (cache state, runtime, storage, rate…). Replicates are
aggregated explicitly, with their count and spread: the trials of a loading cell, the seeds of a simulated one. A
configuration key that only lists what the rows name one by one (``runtimes=[fresh,pool]``, each row's ``runtime``)
is the rows' key, not a report key. Incomplete runs are refused unless asked for, and then kept apart (``complete``).
The report goes to its own folder (``results/reports/<time>/``) unless ``--out`` names one; every multirun writes
its own into ``<sweep>/report`` (``ReportCallback``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments.loading.metrics import CELL_KEYS, summarize_trials
from experiments.report_plot import compare_figure, report_figure

log = logging.getLogger("coldstart.report")

# Keys that never change what was measured: where files go, how much is printed, what is logged or reported, and the
# record of which entries listed which options (the options themselves are compared).
BOOKKEEPING = ("results_dir", "progress", "logger", "experiment.console", "experiment.objective",
               "experiment.cells", "experiment.plot", "experiment.reads", "experiment.sets", "hydra",
               "option_entries")
REPORT_DIR = "report"
# Replicates: rows that repeat one configuration (aggregated, never a report key).
REPLICATES = ("seed", "trial")


class ReportError(ValueError):
    """The runs cannot be reported as asked (none found, incomplete ones, nothing in common to compare)."""


def find_jobs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory (one holding ``summary.csv`` or ``trials.parquet``) under the given paths."""
    jobs: set[Path] = set()
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        for marker in ("summary.csv", "trials.parquet"):
            jobs.update(q.parent for q in p.rglob(marker) if REPORT_DIR not in q.relative_to(p).parts[:-1]
                        and "reports" not in q.relative_to(p).parts[:-1])
    return sorted(jobs)


def flat_config(job: Path) -> dict[str, Any]:
    """The job's ``config.yaml`` as dotted keys (lists as their text); empty when it has none."""
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


def _complete(job: Path) -> bool:
    path = job / "status.json"
    return bool(json.loads(path.read_text()).get("complete")) if path.exists() else False


def _experiment(job: Path) -> dict[str, Any]:
    path = job / "config.yaml"
    return ((yaml.safe_load(path.read_text()) or {}).get("experiment") or {}) if path.exists() else {}


def _listing(key: str, cells: Iterable[str]) -> str | None:
    """The cell a configuration key lists the values of (``runtimes`` → ``runtime``, ``cache_states`` →
    ``cache_state``), if any: its rows carry that cell, so the list is no report key."""
    for cell in cells:
        if key in (f"{cell}s", f"{cell}es") or key.endswith(f".{cell}s"):
            return cell
    return None


@dataclass
class Report:
    """Aggregated runs: the rows (trials or summary rows, each with its job), one row per cell with its replicates'
    count and spread, the keys that make a cell, and what every row shares."""

    rows: pd.DataFrame
    table: pd.DataFrame
    keys: list[str]        # every key of a report row: differing config keys, then the cell keys
    metric: str            # the headline metric (the experiment's objective column, per row)
    replicate: str         # what n counts: "trials" or "seeds"
    fixed: dict[str, Any]  # keys with one value in every row (the figures' titles)
    jobs: int
    incomplete: list[str]


def _stats(rows: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Median, quartiles, min, max and n of ``metric`` over the replicates of each cell."""
    ok = rows[rows["ok"].astype(bool)] if "ok" in rows.columns else rows
    ok = ok.dropna(subset=[metric])
    g = ok.groupby(keys, dropna=False, sort=True)[metric]
    out = pd.DataFrame({f"{metric}_median": g.median(), f"{metric}_q25": g.quantile(0.25),
                        f"{metric}_q75": g.quantile(0.75), f"{metric}_min": g.min(), f"{metric}_max": g.max(),
                        "n": g.size()})
    return out.reset_index()


def aggregate(paths: list[Path], allow_incomplete: bool = False) -> Report:
    """Read every job under ``paths`` and aggregate its rows cell by cell (see the module's docstring)."""
    jobs = find_jobs(paths)
    if not jobs:
        raise ReportError(f"no summary.csv or trials.parquet under {', '.join(map(str, paths))}")
    incomplete = [str(j) for j in jobs if not _complete(j)]
    if incomplete and not allow_incomplete:
        raise ReportError(f"{len(incomplete)} of {len(jobs)} runs did not complete ({', '.join(incomplete)}): "
                          "report the complete ones, or pass --allow-incomplete to keep them apart")
    configs = [flat_config(j) for j in jobs]
    experiment = _experiment(jobs[0])
    loading = all((j / "trials.parquet").exists() for j in jobs)
    frames = []
    for job, cfg in zip(jobs, configs, strict=True):
        df = pd.read_parquet(job / "trials.parquet") if loading else pd.read_csv(job / "summary.csv")
        if loading and "load_s" not in df:
            loading = False
            df = pd.read_csv(job / "summary.csv")
        frames.append((job, cfg, df))
    cells = [str(c) for c in experiment.get("cells") or (CELL_KEYS if loading else [])]
    cells = [c for c in cells if all(c in df.columns for _, _, df in frames)]
    differing = differing_keys(configs)
    replicate_keys = [k for k in differing if k in REPLICATES]
    keys = [k for k in differing if k not in REPLICATES and not _listing(k, cells)]
    rows = pd.concat([df.assign(job=str(job), complete=_complete(job), **{k: cfg.get(k) for k in keys},
                                **{k: cfg.get(k) for k in replicate_keys if k not in df.columns})
                      for job, cfg, df in frames], ignore_index=True)
    if incomplete:
        keys.append("complete")
    group = [*keys, *[c for c in cells if c not in keys]]
    if not group:  # nothing varies and the experiment names no cells: one row, the experiment's
        rows["experiment"] = str(experiment.get("name", "run"))
        group = ["experiment"]
    objective = (experiment.get("objective") or {}).get("column")
    if loading:
        metric, replicate = "load_s", "trials"
        table = summarize_trials(rows, group)
        spread = _stats(rows, group, metric)
        table = table.merge(spread.drop(columns=["n", f"{metric}_median"]), on=group, how="left")
    else:
        metric = str(objective) if objective and objective in rows.columns else \
            next((c for c in rows.columns if pd.api.types.is_float_dtype(rows[c])), "")
        replicate = "seeds" if "seed" in rows.columns else "runs"
        numeric = [c for c in rows.columns if c not in group and c not in REPLICATES and c not in ("job",)
                   and pd.api.types.is_numeric_dtype(rows[c]) and not pd.api.types.is_bool_dtype(rows[c])]
        table = rows.groupby(group, dropna=False, sort=True)[numeric].median().reset_index()
        if metric:
            table = table.drop(columns=[metric]).merge(_stats(rows, group, metric), on=group, how="left")
    fixed = {k: rows[k].iloc[0] for k in group if k in rows.columns and rows[k].nunique(dropna=False) == 1}
    return Report(rows, table, group, metric, replicate, fixed, len(jobs), incomplete)


def default_out(paths: list[Path]) -> Path:
    """``$COLDSTART_RESULTS/reports/<time>`` (default ``results/reports/<time>``): never inside a run's folder."""
    root = Path(os.environ.get("COLDSTART_RESULTS", "results"))
    return root / "reports" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def write_report(paths: list[Path], out: Path, sllm_reference: bool = False,
                 allow_incomplete: bool = False) -> pd.DataFrame:
    """Aggregate ``paths`` into ``out``: report.csv/.parquet, rows.parquet, report.png/.pdf and sources.txt."""
    rep = aggregate(paths, allow_incomplete)
    out.mkdir(parents=True, exist_ok=True)
    rep.rows.to_parquet(out / "rows.parquet", index=False)
    rep.table.to_parquet(out / "report.parquet", index=False)
    rep.table.to_csv(out / "report.csv", index=False)
    (out / "sources.txt").write_text("".join(f"{p.resolve()}\n" for p in paths))
    if rep.metric:
        report_figure(rep.table, rep.keys, rep.metric, rep.replicate, rep.fixed, out / "report.png", rep.jobs,
                      rep.incomplete)
    if sllm_reference:
        from experiments.loading.reference import sllm_comparison  # builds zoo models for byte counts: when asked

        sllm_comparison(rep.rows.rename(columns={"job": "run"})).to_csv(out / "sllm_comparison.csv", index=False)
    return rep.table


# -- compare A B -------------------------------------------------------------------------------------------------

BOOTSTRAP = 2000


def _ratio_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A 95 % bootstrap interval of median(b) / median(a), resampling each side's replicates (NaN with < 2 each)."""
    if len(a) < 2 or len(b) < 2:
        return np.nan, np.nan
    ra = np.median(rng.choice(a, (BOOTSTRAP, len(a))), axis=1)
    rb = np.median(rng.choice(b, (BOOTSTRAP, len(b))), axis=1)
    ratios = rb / ra
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def compare(a: Path, b: Path, metric: str | None = None, allow_incomplete: bool = False,
            seed: int = 0) -> tuple[pd.DataFrame, str, list[str]]:
    """Pair the identical cells of ``a`` and ``b`` (runs or sweeps): per cell the median of the metric on each side,
    their replicates, and B/A with a bootstrap 95 % interval. Returns (table, metric, the keys that differ between
    the two sides' configurations)."""
    ra, rb = aggregate([a], allow_incomplete), aggregate([b], allow_incomplete)
    metric = metric or ra.metric
    if metric != rb.metric and metric not in rb.rows.columns:
        raise ReportError(f"{b} has no {metric!r} rows to compare with {a}")
    keys = [k for k in ra.keys if k in rb.keys]
    if not keys:
        raise ReportError(f"{a} and {b} share no cell key: nothing to pair")
    between = differing_keys([flat_config(j) for j in (*find_jobs([a])[:1], *find_jobs([b])[:1])])
    rng = np.random.default_rng(seed)
    rows = []
    ok_a = ra.rows[ra.rows["ok"].astype(bool)] if "ok" in ra.rows.columns else ra.rows
    ok_b = rb.rows[rb.rows["ok"].astype(bool)] if "ok" in rb.rows.columns else rb.rows
    groups_b = {k if isinstance(k, tuple) else (k,): g for k, g in ok_b.groupby(keys, dropna=False)}
    for cell, ga in ok_a.groupby(keys, dropna=False, sort=True):
        cell = cell if isinstance(cell, tuple) else (cell,)
        gb = groups_b.get(cell)
        if gb is None:
            continue
        va, vb = ga[metric].dropna().to_numpy(float), gb[metric].dropna().to_numpy(float)
        if not len(va) or not len(vb):
            continue
        lo, hi = _ratio_interval(va, vb, rng)
        ma, mb = float(np.median(va)), float(np.median(vb))
        rows.append({**dict(zip(keys, cell, strict=True)), f"{metric}_a": ma, f"{metric}_b": mb,
                     "n_a": len(va), "n_b": len(vb), "ratio_b_over_a": mb / ma if ma else np.nan,
                     "ratio_lo": lo, "ratio_hi": hi})
    if not rows:
        raise ReportError(f"no cell of {a} appears in {b} (cell keys {keys})")
    return pd.DataFrame(rows), metric, between


def write_compare(a: Path, b: Path, out: Path, metric: str | None = None, allow_incomplete: bool = False) -> \
        pd.DataFrame:
    table, metric, between = compare(a, b, metric, allow_incomplete)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv", index=False)
    (out / "sources.txt").write_text(f"A {a.resolve()}\nB {b.resolve()}\n")
    keys = [c for c in table.columns if not c.startswith((metric, "n_", "ratio"))]
    compare_figure(table, keys, metric, between, out / "compare.png")
    return table


# -- command line --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return _main_compare(argv[1:])
    parser = argparse.ArgumentParser(prog="coldstart-report", description=__doc__.split("\n\n")[0],
                                     epilog="coldstart-report compare A B: the same cells of two runs, B/A")
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: results/reports/<time>, under $COLDSTART_RESULTS)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="report runs that did not complete too, kept apart in a 'complete' column")
    parser.add_argument("--sllm-reference", action="store_true",
                        help="also write sllm_comparison.csv: our loaders beside sllm-store's published results")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.paths)
    return _written(lambda: write_report(args.paths, out, args.sllm_reference, args.allow_incomplete), out, "report",
                    "rows")


def _main_compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="coldstart-report compare",
                                     description="Pair the identical cells of two runs (or sweeps): B/A per cell "
                                                 "with a bootstrap 95 %% interval from the replicates")
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--metric", default=None, help="a row column (default: the experiment's, load_s for loading)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--allow-incomplete", action="store_true")
    args = parser.parse_args(argv)
    out = args.out or default_out([args.a, args.b])
    return _written(lambda: write_compare(args.a, args.b, out, args.metric, args.allow_incomplete), out, "compare",
                    "paired cells")


def _written(write: Callable[[], pd.DataFrame], out: Path, stem: str, what: str) -> int:
    """Run ``write``; print its table and files (exit 0), or the one-line reason it cannot be written (exit 2)."""
    try:
        table = write()
    except (FileNotFoundError, ReportError) as exc:
        print(f"coldstart-report: {exc}", file=sys.stderr)
        return 2
    from harness.summary import console_table

    print(console_table(table, source=f"{stem}.csv"))
    print(f"\n{len(table)} {what} → {out}/{stem}.csv, {out}/{stem}.png")
    return 0


class ReportCallback(Callback):
    """Hydra callback: the report of a multirun, written to ``<sweep dir>/report`` when the sweep ends (incomplete
    jobs kept apart)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            write_report([sweep], sweep / REPORT_DIR, allow_incomplete=True)
            log.info("sweep report: %s", sweep / REPORT_DIR / "report.csv")
        except Exception as exc:  # a report must never turn a finished sweep into a failure
            log.error("no sweep report for %s: %s", sweep, exc)


if __name__ == "__main__":
    raise SystemExit(main())
