"""gpu_quick.sh's arithmetic: step plans sized from the measured run so far, ceilings and the one-screen summary.

It reads only what the runs wrote (summary.csv, trials.parquet, ceilings.json, run.log, ``--cfg job`` output,
steps.csv, junit XML) and never imports the harness, so it keeps working while experiment modules move.
Sub-commands print shell assignments (``plan-*``, ``bytes``) or write files under the machine folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

BASELINES = ("safetensors", "torch")  # the loaders the README's native ratios are taken against
OURS = "native"
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
SAFETY = 1.25  # estimates × this before they meet the time left (a dry run on a busy VM came in 1.2× over the raw one)
STATE_ORDER = {"cold": 0, "warm": 1, "hot": 2, "remote": 3}
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _assign(**values: object) -> None:
    for key, value in values.items():
        print(f"{key}={shlex.quote(str(value))}")


def facts(args: argparse.Namespace) -> int:
    """From a ``python -m harness ... --cfg job`` dump: the model's checkpoint bytes (reference_params × dtype
    size; 0 when unknown, as for the tiny test models), the native DRAM tier (with ``loader=native``) and the
    number of ablation steps (with ``experiment=sllm_ablation``)."""
    cfg = yaml.safe_load(Path(args.cfg).read_text())
    params = (cfg.get("model") or {}).get("reference_params")
    loader = cfg.get("loader") or {}
    _assign(BYTES=int(params) * DTYPE_BYTES.get(str(cfg.get("dtype")), 2) if params else 0,
            DRAM_CAP=int(loader.get("dram_capacity_bytes") or 0), DRAM_DIR=loader.get("dram_dir") or "",
            ABLATION_STEPS=len(cfg.get("ablation_steps") or []))
    return 0


def plan_hot(args: argparse.Namespace) -> int:
    """Cache states and overrides so that ``hot`` fits the DRAM tier: a larger tier capacity when the model
    exceeds the configured one but fits the tmpfs, no hot state when it does not fit the tmpfs."""
    states = [s for s in args.states.strip("[]").split(",") if s]
    need = int(args.bytes * 1.1)
    if "hot" in states and args.bytes and need > args.tmpfs_free:
        states.remove("hot")
        _assign(STATES="[" + ",".join(states) + "]", EXTRA="", NOTE=f"no hot: {need / 1e9:.1f} GB > "
                f"{args.tmpfs_free / 1e9:.1f} GB free on the DRAM tier's tmpfs")
    elif "hot" in states and args.bytes and need > args.dram_cap:
        cap = min(args.tmpfs_free, int(args.bytes * 1.2))
        _assign(STATES=args.states, NOTE=f"native DRAM tier raised to {cap / 1e9:.1f} GB",
                EXTRA=f"loader_args.{OURS}.dram_capacity_bytes={cap}")
    else:
        _assign(STATES=args.states, EXTRA="", NOTE="")
    return 0


def _startup_s(run_dir: Path, started_epoch: float) -> float:
    """Seconds from the step's start to the run's first log line (interpreter, imports, composition)."""
    try:
        first = (run_dir / "run.log").read_text().splitlines()[0]
        match = LOG_TIME.match(first)
        if match is None:
            return 0.0
        t = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return max(0.0, t - started_epoch)
    except (OSError, IndexError, ValueError):
        return 0.0


class Measured:
    """What one finished loading run says about the cost of the next ones: per-loader trial time and the rest."""

    def __init__(self, run_dir: Path, step_s: float, started_epoch: float) -> None:
        trials = pd.read_parquet(run_dir / "trials.parquet")
        self.trials = trials
        self.rounds = int(trials["trial"].max()) + 1
        self.ok = trials[trials["ok"].astype(bool)]
        spawned = trials[trials["status"].isin(["ok", "failed"])]
        self.bytes = float(self.ok["bytes"].max()) if len(self.ok) else 0.0
        self.startup_s = _startup_s(run_dir, started_epoch)
        # generation, ceilings, eviction, warming, verification, plotting: taken to scale with the bytes
        self.other_s = max(0.0, step_s - self.startup_s - float(self.ok["cold_start_s"].sum()))
        self.per_trial_s = (step_s - self.startup_s) / max(1, len(spawned))

    def estimate(self, ratio: float, rounds: int, loaders: list[str]) -> float:
        """Seconds a run of ``rounds`` trials of ``loaders`` on a model ``ratio`` × as large should take: process
        overhead per trial as measured, weights time and everything else × ``ratio`` (times SAFETY)."""
        ok = self.ok[self.ok["loader"].isin(loaders)]
        fixed = float((ok["cold_start_s"] - ok["t_weights_s"]).sum()) / self.rounds
        weights = float(ok["t_weights_s"].sum()) / self.rounds
        return SAFETY * (self.startup_s + (fixed + weights * ratio) * rounds + self.other_s * ratio)

    def formats(self) -> dict[str, str]:
        """loader → checkpoint format, for the loaders that were available in this run."""
        avail = self.trials[self.trials["status"] != "unavailable"].dropna(subset=["format"])
        return dict(zip(avail["loader"], avail["format"], strict=True))


def plan_big(args: argparse.Namespace) -> int:
    """Trials and loaders for the large model that fit the time and disk left, from the small run's costs.

    Time is kept for ``--reserve-trials`` more trials at the small run's wall time per trial (the smallest
    ablation after it). Preference: every loader with as many trials as fit, then ours and the two baselines."""
    m = Measured(Path(args.small_run), args.small_step_s, args.small_started)
    ratio = args.big_bytes / m.bytes if args.big_bytes and m.bytes else 1.0
    keep = SAFETY * (m.startup_s + args.reserve_trials * m.per_trial_s) if args.reserve_trials else 0.0
    avail = args.avail_s - keep
    loaders = [x for x in args.loaders.strip("[]").split(",") if x]
    formats = m.formats()
    notes = [f"{ratio:.1f}x the small model's bytes"]
    # disk: one copy of each format the available loaders read (delete_checkpoints removes them afterwards)
    while True:
        need = len({formats[x] for x in loaders if x in formats}) * args.big_bytes * 1.1
        if need <= args.free_disk_bytes:
            break
        exclusive = [x for x in loaders if x in formats and x not in (OURS, *BASELINES)
                     and sum(formats.get(y) == formats[x] for y in loaders) == 1]
        if not exclusive:
            _assign(TRIALS=0, LOADERS="[]", NOTE=f"skipped: {need / 1e9:.0f} GB of checkpoints > "
                    f"{args.free_disk_bytes / 1e9:.0f} GB free")
            return 0
        notes.append(f"dropped {exclusive[-1]} (its own format does not fit the disk)")
        loaders.remove(exclusive[-1])
    core = [x for x in loaders if x in (OURS, *BASELINES)]
    for chosen in (loaders, core) if core != loaders else (loaders,):
        for rounds in range(args.trials, 0, -1):
            est = m.estimate(ratio, rounds, chosen)
            if est <= avail:
                if chosen is core:
                    notes.append("peers dropped to fit the time")
                notes.append(f"{rounds} trials, estimated {est:.0f} s of {avail:.0f} s")
                _assign(TRIALS=rounds, LOADERS="[" + ",".join(chosen) + "]", NOTE="; ".join(notes))
                return 0
    _assign(TRIALS=0, LOADERS="[]", NOTE=f"skipped: 1 trial of {','.join(core)} estimated "
            f"{m.estimate(ratio, 1, core):.0f} s > {avail:.0f} s left for it")
    return 0


def plan_ablation(args: argparse.Namespace) -> int:
    """Trials (or smoke) for the ablation on the small model, from the small run's wall time per trial."""
    m = Measured(Path(args.small_run), args.small_step_s, args.small_started)
    options = [(t, args.variants, "false") for t in range(args.trials, 0, -1) if args.variants > 2 and not args.smoke]
    options.append((1, 2, "true"))  # smoke: the first and the last step only
    for rounds, variants, smoke in options:
        est = SAFETY * (m.startup_s + variants * args.states * rounds * m.per_trial_s)
        if est <= args.avail_s:
            note = f"{variants} variants x {args.states} states x {rounds} trials, estimated {est:.0f} s"
            _assign(TRIALS=rounds, SMOKE=smoke, NOTE=note + f" of {args.avail_s:.0f} s left")
            return 0
    _assign(TRIALS=0, SMOKE="true", NOTE=f"skipped: even the smoke ablation would not fit {args.avail_s:.0f} s")
    return 0


def _parquet_to_csv(run_dir: Path) -> None:
    for p in run_dir.glob("*.parquet"):
        if p.stem != "trials":  # speedups, gains: small tables that read better in a diff as CSV
            pd.read_parquet(p).to_csv(p.with_suffix(".csv"), index=False)


def ceilings_table(machine: Path) -> pd.DataFrame:
    """Every ceiling of every loading run under ``machine``: run, cell, ceiling, gbps."""
    rows = []
    for path in [p / "ceilings.json" for p in loading_runs(machine)] + sorted(machine.glob("*/ceilings.json")):
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        cells = doc if "gbps" not in doc else {"": doc}
        for cell, c in cells.items():
            for name, gbps in (c.get("gbps") or {}).items():
                rows.append({"run": str(path.parent.relative_to(machine)), "cell": cell, "ceiling": name,
                             "gbps": gbps})
    return pd.DataFrame(rows, columns=["run", "cell", "ceiling", "gbps"])


def ceilings(args: argparse.Namespace) -> int:
    """Write ceilings.csv; on CUDA every loading run must carry pinned and pageable H2D (exit 1 otherwise)."""
    machine = Path(args.machine)
    for run_dir in [*machine.glob("sllm_loading/*/"), machine / "sllm_ablation"]:
        if run_dir.is_dir():
            _parquet_to_csv(run_dir)
    table = ceilings_table(machine)
    table.to_csv(machine / "ceilings.csv", index=False)
    loading = table[table["run"].str.startswith("sllm_loading/")]
    if loading.empty:
        print("no ceilings.json from a loading run", file=sys.stderr)
        return 1
    need = ["disk_read", "pagecache_read", "memcpy"] + (["h2d_pinned", "h2d_pageable"] if args.cuda else [])
    missing = [(r, n) for r, g in loading.groupby("run") for n in need
               if not (g.loc[g["ceiling"] == n, "gbps"].notna().any())]
    for r, n in missing:
        print(f"{r}: ceiling {n} missing", file=sys.stderr)
    shown = loading.drop_duplicates(["ceiling"], keep="last")
    print("  ".join(f"{c} {g:.2f}" for c, g in zip(shown["ceiling"], shown["gbps"], strict=True) if pd.notna(g)),
          "GB/s")
    return 1 if missing else 0


def loading_runs(machine: Path) -> list[Path]:
    """The loading runs under ``machine`` in the order they started."""
    runs = [p for p in (machine / "sllm_loading").glob("*/") if (p / "config.yaml").exists()]
    return sorted(runs, key=lambda p: (p / "config.yaml").stat().st_mtime)


def ratio_rows(machine: Path) -> list[dict[str, Any]]:
    """Per model and cache state: native's median load time and the baselines' over it (from summary.csv), and
    for hot, native's throughput as a fraction of pinned H2D (of memcpy where there is no CUDA)."""
    rows: list[dict[str, Any]] = []
    for run_dir in loading_runs(machine):
        if not (run_dir / "summary.csv").exists():
            continue
        summary = pd.read_csv(run_dir / "summary.csv")
        summary = summary.sort_values("cache_state", key=lambda s: s.map(STATE_ORDER), kind="stable")
        ceils = json.loads((run_dir / "ceilings.json").read_text())
        cells = summary[summary["n"] > 0].groupby(["model", "dtype", "cache_state"], sort=False)
        for (model, dtype, state), g in cells:
            by = g.set_index("loader")
            if OURS not in by.index:
                continue
            ours = float(by.at[OURS, "load_s_median"])
            row: dict[str, Any] = {"model": model, "dtype": dtype, "cache_state": state, "native_load_s": ours}
            for base in BASELINES:
                row[f"{base}_load_s"] = float(by.at[base, "load_s_median"]) if base in by.index else math.nan
                row[f"native_vs_{base}"] = row[f"{base}_load_s"] / ours if ours > 0 else math.nan
            if state == "hot":
                gbps = (ceils.get(f"{model} {dtype}") or {}).get("gbps") or {}
                name = "h2d_pinned" if gbps.get("h2d_pinned") else "memcpy"
                row.update({"native_gbps": float(by.at[OURS, "throughput_gbps_median"]), "hot_ceiling": name,
                            "hot_ceiling_gbps": gbps.get(name) or math.nan})
                row["hot_fraction"] = row["native_gbps"] / row["hot_ceiling_gbps"]
            rows.append(row)
    return rows


def _x(v: object) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}x"


def _gpu_tests(machine: Path) -> str:
    try:
        suite = ET.parse(machine / "gpu_tests" / "junit.xml").getroot()
    except (OSError, ET.ParseError):
        return "no junit.xml"
    suite = suite if suite.tag == "testsuite" else suite[0]
    n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return f"{n - f - e - s} passed, {f + e} failed, {s} skipped"


def summary(args: argparse.Namespace) -> int:
    """Write summary.md and ratios.csv under the machine folder and print the summary (one screen)."""
    machine = Path(args.machine)
    steps = pd.read_csv(machine / "steps.csv") if (machine / "steps.csv").exists() else pd.DataFrame()
    rows = ratio_rows(machine)
    pd.DataFrame(rows).to_csv(machine / "ratios.csv", index=False)
    lines = [f"# gpu_quick on {machine.name}{' (DRY RUN: cpu, tiny models)' if args.dryrun else ''}", "",
             f"{args.when}, commit {args.commit}, budget {args.budget_s:.0f} s, total {args.total_s:.0f} s", ""]
    lines += ["## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    for r in steps.itertuples():
        note = "" if pd.isna(r.note) else str(r.note)
        lines.append(f"| {r.step} | {r.status} | {r.seconds:.1f} | {note} |")
    lines += ["", f"gpu tests: {_gpu_tests(machine)}"]
    table = ceilings_table(machine)
    if not table.empty:
        lines += ["", "## Ceilings (GB/s)", ""]
        for cell, g in table[table["run"].str.startswith("sllm_loading/")].groupby("cell", sort=False):
            lines.append(f"- {cell}: " + ", ".join(f"{c} {v:.2f}" for c, v in zip(g["ceiling"], g["gbps"], strict=True)
                                                  if pd.notna(v)))
    lines += ["", "## Native vs baselines (ratio of same-run medians; > 1: native faster)", ""]
    for r in rows:
        base = (f"{r['model']} {r['cache_state']}: native {r['native_load_s']:.4f} s | "
                + " | ".join(f"vs {b} {_x(r[f'native_vs_{b}'])}" for b in BASELINES))
        if r["cache_state"] == "hot":
            base += " (no DRAM tier in the baselines)" if all(math.isnan(r[f"{b}_load_s"]) for b in BASELINES) else ""
        lines.append("- " + base)
    if not rows:
        lines.append("- no finished loading run")
    hot = [r for r in rows if r["cache_state"] == "hot"]
    lines += ["", "## Hot native as a fraction of pinned H2D", ""]
    for r in hot:
        why = "" if r["hot_ceiling"] == "h2d_pinned" else " (no CUDA: memcpy stands in for pinned H2D)"
        lines.append(f"- {r['model']} hot: native {r['native_gbps']:.2f} GB/s = {r['hot_fraction']:.3f} of "
                     f"{r['hot_ceiling']} ({r['hot_ceiling_gbps']:.2f} GB/s){why}")
    if not hot:
        lines.append("- no hot native rows")
    unavailable = []
    for p in loading_runs(machine):
        if not (p / "summary.csv").exists():
            continue
        s = pd.read_csv(p / "summary.csv")
        for loader, g in s[s["status"] != "ok"].groupby("loader"):
            if (g["n"] == 0).all() and not g["error"].astype(str).str.contains("no DRAM tier").all():
                unavailable.append(f"{loader} ({str(g['error'].iloc[0]).splitlines()[0][:80]})")
    lines += ["", "loaders without rows: " + (", ".join(sorted(set(unavailable))) or "none")]
    gains = machine / "sllm_ablation" / "gains.csv"
    if gains.exists():
        g = pd.read_csv(gains)
        last = g.sort_values("step").groupby("cache_state").tail(1)
        lines.append("ablation, all steps vs the first: " + ", ".join(
            f"{r.cache_state} {_x(r.speedup_vs_start)}" for r in last.itertuples()))
    text = "\n".join(lines) + "\n"
    (machine / "summary.md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("facts", help="model bytes, DRAM tier, ablation steps from a `--cfg job` dump")
    p.add_argument("cfg")
    p = sub.add_parser("plan-hot")
    p.add_argument("--states", required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--dram-cap", type=int, required=True)
    p.add_argument("--tmpfs-free", type=int, required=True)
    for name in ("plan-big", "plan-ablation"):
        p = sub.add_parser(name)
        p.add_argument("--small-run", required=True)
        p.add_argument("--small-step-s", type=float, required=True)
        p.add_argument("--small-started", type=float, required=True)
        p.add_argument("--avail-s", type=float, required=True)
        p.add_argument("--trials", type=int, required=True)
        if name == "plan-big":
            p.add_argument("--big-bytes", type=int, required=True)
            p.add_argument("--free-disk-bytes", type=int, required=True)
            p.add_argument("--loaders", required=True)
            p.add_argument("--reserve-trials", type=int, default=0)
        else:
            p.add_argument("--variants", type=int, required=True)
            p.add_argument("--states", type=int, required=True)
            p.add_argument("--smoke", action="store_true")
    p = sub.add_parser("ceilings")
    p.add_argument("machine")
    p.add_argument("--cuda", action="store_true")
    p = sub.add_parser("summary")
    p.add_argument("machine")
    p.add_argument("--dryrun", action="store_true")
    p.add_argument("--when", default="")
    p.add_argument("--commit", default="")
    p.add_argument("--budget-s", type=float, default=0.0)
    p.add_argument("--total-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    commands = {"facts": facts, "plan-hot": plan_hot, "plan-big": plan_big, "plan-ablation": plan_ablation,
                "ceilings": ceilings, "summary": summary}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
