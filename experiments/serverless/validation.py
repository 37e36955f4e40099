"""``experiment=sim_vs_real``: run a seeded scenario for real, calibrate the simulator from that run's measured
load, runtime start-up and inference times, simulate the same trace under the same policy, and report the error
per metric."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments.serverless.real import (
    as_arrays,
    check_real,
    real_cluster,
    real_config,
    run_policy_real,
    runtimes_of,
    trace,
)
from experiments.serverless.simulated import build_policy, policies_of
from harness.experiment import ExperimentResult, PartialResult
from schedulers.catalog import base_name, model_infos
from schedulers.cluster import RUNTIME_KINDS, ModelTimes, RuntimeTimes
from schedulers.metrics import summarize, summary_frame
from schedulers.simulator import Simulator

log = logging.getLogger("coldstart.schedulers.real")

# A real cold start's engine set-up (``schedulers/real/instance.py``; absent, or 0 s, without an engine's steps).
ENGINE_PHASES = ("kv_alloc_s", "compile_s", "graph_capture_s")
# The metrics compared, how each is computed from a requests table and the run's stats.
METRICS = ("ttft_s_p50", "ttft_s_p99", "cold_starts", "gpu_seconds")
# Also compared: mean seconds a load spent getting a ready process (real: hand-off + imports per cold start;
# simulated: the runtime start-up and pool waits it charged, per load).
RUNTIME_METRIC = "runtime_s_mean"


def runtime_phases(cold: pd.DataFrame) -> pd.DataFrame:
    """``cold`` (a real run's ``cold_starts`` table) with ``runtime``, ``handoff_s`` and ``imports_s`` filled in.

    ``handoff_s``: asking the runtime for a ready process until having it; runs from before the runtime contract
    recorded ``process_start_s`` (a fresh process's start until it was imported) instead, which stands in for it.
    A phase a run did not record counts 0 s; a run that names no runtime ran ``fresh`` (the only one there was).
    """
    nan = pd.Series(np.nan, index=cold.index, dtype=float)
    handoff = cold.get("handoff_s", nan).astype(float).combine_first(cold.get("process_start_s", nan).astype(float))
    runtime = cold["runtime"].fillna("fresh").astype(str) if "runtime" in cold else "fresh"
    return cold.assign(runtime=runtime, handoff_s=handoff.fillna(0.0),
                       imports_s=cold.get("imports_s", nan).astype(float).fillna(0.0))


def calibrate(requests: pd.DataFrame, cold: pd.DataFrame) -> tuple[dict[str, float], dict[str, ModelTimes]]:
    """Tier bandwidths and per-architecture times from one real run.

    Bandwidth of a tier = median bytes / (weights + download) seconds of its cold starts (DRAM falls back to
    SSD, SSD to remote, when a tier served none); ``startup_s`` = median hand-off + imports of the architecture's
    ``fresh`` cold starts (process start + imports; 0 when the run had none: other runtimes' start-up is
    :func:`calibrate_runtime`'s), ``engine_s`` = median engine set-up (``kv_alloc_s`` + ``compile_s`` +
    ``graph_capture_s``), and ``startup_samples_s`` every one of them (a simulated cold start draws from
    them: on a shared machine one start-up varies by tens of percent, slower where others overlap it, and a
    constant puts every simulated cold start at the median); ``build_s`` = median of what a cold start spent
    besides the bytes and that start-up (model build, RPC), plus the median by which requests' cold-start time
    exceeds the instances' own (the controller taking the instance over); prefill = least-squares line of measured
    prefill time on prompt tokens; decode = median seconds per decoded token. The controller's dispatch is
    :func:`simulate_calibrated`'s.
    """
    gbps: dict[str, float] = {}
    if len(cold):
        cold = runtime_phases(cold)
        engine = sum((cold[c].astype(float).fillna(0.0) for c in ENGINE_PHASES if c in cold),
                     pd.Series(0.0, index=cold.index))
        cold = cold.assign(moved_s=cold["weights_s"] + cold["download_s"].fillna(0.0),
                           startup_s=cold["handoff_s"] + cold["imports_s"], engine_s=engine)
        for tier, g in cold.groupby("tier"):
            gbps[str(tier)] = float(np.median(g["bytes"] / g["moved_s"])) / 1e9
    for tier, fallback in (("ssd", "remote"), ("dram", "ssd"), ("remote", "ssd")):
        if tier not in gbps and fallback in gbps:
            gbps[tier] = gbps[fallback]
    for tier in ("dram", "ssd", "remote"):
        gbps.setdefault(tier, 1.0)
    times: dict[str, ModelTimes] = {}
    done = requests[requests["status"] == "done"]
    arch_of_cold = cold["model"].map(base_name) if len(cold) else pd.Series(dtype=str)
    for arch in sorted({base_name(m) for m in requests["model"]}):
        c = cold[arch_of_cold == arch] if len(cold) else cold
        build = float(np.median(c["load_s"] - c["moved_s"] - c["startup_s"] - c["engine_s"])) if len(c) else 0.0
        engine_s = float(np.median(c["engine_s"])) if len(c) else 0.0
        fresh = c[c["runtime"] == "fresh"] if len(c) else c
        startup = float(np.median(fresh["startup_s"])) if len(fresh) else 0.0
        samples = tuple(sorted(max(float(x), 0.0) for x in fresh["startup_s"])) if len(fresh) else ()
        d = done[done["model"].map(base_name) == arch]
        prefill_slope, prefill_base, decode = None, None, None
        if len(d) >= 2 and d["input_tokens"].nunique() > 1:
            slope, base = np.polyfit(d["input_tokens"].to_numpy(float), d["prefill_s"].to_numpy(float), 1)
            prefill_slope, prefill_base = max(float(slope), 0.0), max(float(base), 0.0)
        if len(d) and not prefill_slope:  # no rise with the prompt measured (a flat or falling fit: noise at
            prefill_slope, prefill_base = 0.0, float(d["prefill_s"].median())  # this size): the median, not the
            # intercept of a line whose negative slope was cut off (which sits above every measured prefill)
        steps = d[d["output_tokens"] > 1]
        if len(steps):
            decode = float(np.median(steps["decode_s"] / (steps["output_tokens"] - 1)))
        # What requests saw that an instance's own timings miss (a few ms; all of a pool's cold start is tens of
        # ms): the controller taking a loaded instance over (requests' load_s is timed on its thread).
        cold_reqs = d[d["cold_start"].astype(bool)] if {"cold_start", "load_s"} <= set(d.columns) else d.iloc[:0]
        if len(c) and len(cold_reqs):
            build += max(float(cold_reqs["load_s"].median()) - float(c["load_s"].median()), 0.0)
        times[arch] = ModelTimes(build_s=max(build, 0.0), first_token_s=prefill_base,
                                 prefill_s_per_token=prefill_slope, decode_s_per_token=decode,
                                 startup_s=max(startup, 0.0), startup_samples_s=samples, engine_s=max(engine_s, 0.0))
    return gbps, times


def _stat(stats: Mapping[str, Any], key: str) -> float:
    """A number from a real run's stats, NaN when absent or not a number."""
    try:
        return float(stats.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


def calibrate_runtime(cold: pd.DataFrame, stats: Mapping[str, Any]) -> RuntimeTimes:
    """The runtime start-up costs of one real run, for the simulated cluster (``Cluster.runtime``).

    The kind is the run's ``stats["runtime"]`` (a run that names none ran ``fresh``, whose start-up is per model:
    :func:`calibrate`). ``forkserver``: ``handoff_s`` = median hand-off (the fork). ``pool``: ``pool_size`` and
    ``worker_start_s`` (median seconds to start one worker) from the stats; ``handoff_s`` = median hand-off of the
    cold starts that found a ready worker (hand-off < ½ ``worker_start_s``: the others waited for a start, which
    the simulator's pool clock adds itself). A pool run without ``worker_start_s`` gets 0 (replacements are
    instant) and one without ``pool_size`` gets 1, both logged.
    """
    kind = str(stats.get("runtime") or "fresh")
    if kind not in RUNTIME_KINDS:
        raise ValueError(f"stats['runtime']={kind!r} is not a runtime the simulator models; "
                         f"one of {list(RUNTIME_KINDS)}")
    if kind == "fresh":
        return RuntimeTimes()
    rows = runtime_phases(cold)
    handoff = rows.loc[rows["runtime"] == kind, "handoff_s"]
    if kind == "forkserver":
        return RuntimeTimes("forkserver", handoff_s=max(float(handoff.median()), 0.0) if len(handoff) else 0.0)
    worker_start = _stat(stats, "worker_start_s")
    if not math.isfinite(worker_start) or worker_start < 0:
        log.warning("runtime=pool run without worker_start_s in its stats: the simulated pool refills instantly")
        worker_start = 0.0
    size = _stat(stats, "pool_size")
    if not math.isfinite(size) or size < 1:
        log.warning("runtime=pool run without pool_size in its stats: simulating 1 ready worker per server")
        size = 1.0
    ready = handoff[handoff < 0.5 * worker_start]
    picked = ready if len(ready) else handoff
    refill = str(stats.get("pool_refill") or "after_load")
    return RuntimeTimes("pool", handoff_s=max(float(picked.median()), 0.0) if len(picked) else 0.0,
                        pool_size=int(size), worker_start_s=worker_start,
                        refill=refill if refill in ("after_load", "on_acquire") else "after_load")


def runtime_s_mean(cold: pd.DataFrame) -> float:
    """Mean seconds a real load spent getting a ready process (hand-off + imports), NaN without loads."""
    if not len(cold):
        return math.nan
    phases = runtime_phases(cold)
    return float((phases["handoff_s"] + phases["imports_s"]).mean())


def dispatch_overhead(real: pd.DataFrame, sim: pd.DataFrame) -> float:
    """The controller's own delay per request (arrival → prefill starts: its event loop, a thread hand-off, the
    RPC), which the simulator does not model: the median by which a real request's queue time exceeds the
    simulated queue time of the same request (its simulated waits for loads and busy instances taken out)."""
    if not {"request_id", "queue_s"} <= set(real.columns):
        return 0.0
    both = real[["request_id", "queue_s"]].merge(sim[["request_id", "queue_s"]], on="request_id",
                                                 suffixes=("_real", "_sim")).dropna()
    if both.empty:
        return 0.0
    return max(float((both["queue_s_real"] - both["queue_s_sim"]).median()), 0.0)


def check_replicates(replicates: int) -> int:
    """``experiment.replicates`` as a count ≥ 1 (checked before any real run starts)."""
    if isinstance(replicates, bool) or int(replicates) != replicates or replicates < 1:
        raise ValueError(f"experiment.replicates={replicates!r} is not allowed; it must be an integer ≥ 1")
    return int(replicates)


def simulate_calibrated(cfg: DictConfig, entry: DictConfig, models: tuple[str, ...], requests: list[Any],
                        real_df: pd.DataFrame, cold: pd.DataFrame, stats: Mapping[str, Any], replicates: int = 1,
                        draw: bool = True) -> tuple[list[Any], float, dict[str, Any]]:
    """Calibrate the simulator from one real run and simulate the same trace under the same policy: (the
    simulations, one per replicate, their wall seconds, the calibration). Replicate ``r`` draws its cold starts'
    start-ups (:func:`calibrate`'s samples) with seed ``cfg.seed + r`` (``draw=False``: every cold start takes the
    median, the calibration before the draw); the decisions' inputs are the same in all. The controller's dispatch
    (:func:`dispatch_overhead`) is measured against a pass with median start-ups and no dispatch (not against one
    random draw) and added to every prefill of every replicate."""
    replicates = check_replicates(replicates)
    gbps, times = calibrate(real_df, cold)
    runtime = calibrate_runtime(cold, stats)
    arrays = as_arrays(requests, models)
    lifecycle = real_config(cfg).lifecycle  # the real run's timeout, migration rule and retries: one source
    seed = int(cfg.seed)

    def simulate(replicate: int, dispatch: float, samples: bool) -> Any:
        timed = {a: replace(t, first_token_s=(t.first_token_s or 0.0) + dispatch,
                            startup_samples_s=t.startup_samples_s if samples else ()) for a, t in times.items()}
        cluster = real_cluster(cfg.real, model_times=timed, dram_gbps=gbps["dram"], ssd_gbps=gbps["ssd"],
                               remote_gbps=gbps["remote"], runtime=runtime, name="calibrated-from-real")
        infos = model_infos(list(models), cluster, str(cfg.dtype))
        scheduler, keepalive = build_policy(cfg, entry)
        return Simulator(cluster, infos, scheduler, keepalive, lifecycle, seed=seed + replicate).run(arrays)

    t0 = time.perf_counter()
    dispatch = dispatch_overhead(real_df, simulate(0, 0.0, samples=False).requests) if len(real_df) else 0.0
    sims = [simulate(r, dispatch, samples=draw) for r in range(replicates)]
    calibration = {"gbps": gbps, "model_times": {k: vars(v) for k, v in times.items()}, "runtime": asdict(runtime),
                   "dispatch_s": dispatch, "replicates": replicates}
    return sims, time.perf_counter() - t0, calibration


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """The median of each column over replicate rows (a simulation's summary over its replicates)."""
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def metric_values(requests: pd.DataFrame, stats: dict[str, float]) -> dict[str, float]:
    ttft = requests["ttft_s"].to_numpy(float)
    return {"ttft_s_p50": float(np.percentile(ttft, 50)), "ttft_s_p99": float(np.percentile(ttft, 99)),
            "cold_starts": float(requests["cold_start"].sum()), "gpu_seconds": float(stats.get("gpu_seconds", 0))}


def run_sim_vs_real(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """For each policy × runtime: real run → calibration → simulation of the same trace → per-metric relative
    error."""
    check_real(cfg)
    replicates = check_replicates(cfg.experiment.replicates)
    requests, models = trace(cfg)
    frames, rows, colds = [], [], []
    interrupted = False
    errors: list[dict[str, Any]] = []
    calib: dict[str, Any] = {}
    policies = policies_of(cfg)[:1] if bool(cfg.smoke) else policies_of(cfg)
    for name, entry in policies:
        for rt_name in runtimes_of(cfg):
            log.info("%s on runtime %s: %d requests for real", name, rt_name or "(composed)", len(requests))
            real_df, real_stats, cold = run_policy_real(cfg, entry, requests, models,
                                                        out_dir / "servers" / f"{name}-{rt_name or 'runtime'}",
                                                        rt_name)
            rt = str(real_stats["runtime"])
            keys = {"policy": name, "runtime": rt}
            if real_stats.get("interrupted"):  # Ctrl-C: keep what was measured, simulate nothing more
                real_df.insert(0, "mode", "real")
                real_df.insert(0, "runtime", rt)
                real_df.insert(0, "policy", name)
                frames.append(real_df)
                rows.append({**keys, "mode": "real", **summarize(real_df, real_stats, real_stats["wall_s"])})
                interrupted = True
                break
            sims, sim_wall, calibration = simulate_calibrated(cfg, entry, models, requests, real_df, cold,
                                                              real_stats, replicates)
            sim_df = pd.concat([sim.requests.assign(replicate=r) for r, sim in enumerate(sims)], ignore_index=True)
            real_df = real_df.assign(replicate=0)
            for mode, df, row in (("real", real_df, summarize(real_df, real_stats, real_stats["wall_s"])),
                                  ("sim", sim_df, {**median_row([summarize(s.requests, s.stats) for s in sims]),
                                                   "wall_s": sim_wall})):
                df.insert(0, "mode", mode)
                df.insert(0, "runtime", rt)
                df.insert(0, "policy", name)
                frames.append(df)
                rows.append({**keys, "mode": mode, **row})
            real_m = {**metric_values(real_df, real_stats), RUNTIME_METRIC: runtime_s_mean(cold)}
            per_rep = [{**metric_values(s.requests, s.stats),
                        RUNTIME_METRIC: s.stats["runtime_wait_s"] / s.stats["loads"] if s.stats["loads"] else math.nan}
                       for s in sims]
            for metric in (*METRICS, RUNTIME_METRIC):
                r = real_m[metric]
                values = np.array([m[metric] for m in per_rep], dtype=float)
                s_med = float(np.median(values))
                errors.append({**keys, "metric": metric, "real": r, "sim": s_med,
                               "rel_error": abs(s_med - r) / r if r else float("nan"),
                               "sim_p10": float(np.percentile(values, 10)), "sim_p90": float(np.percentile(values, 90)),
                               "replicates": len(sims)})
            if "runtime" not in cold:
                cold.insert(0, "runtime", rt)
            cold.insert(0, "policy", name)
            colds.append(cold)
            calib[f"{name}/{rt}"] = {**calibration, "workers": {k: v for k, v in real_stats.items()
                                                                if k.startswith(("worker", "pool_"))}}
            log.info("%s on %s: %s", name, rt, {e["metric"]: round(float(e["rel_error"]), 3) for e in errors
                                                if e["policy"] == name and e["runtime"] == rt})
        if interrupted:
            break
    meta: dict[str, Any] = {"calibration": calib, "servers": int(cfg.real.servers),
                            "time_scale": float(cfg.real.time_scale), "requests": len(requests),
                            "executor": str(cfg.executor._target_), "seed": int(cfg.seed)}
    result = ExperimentResult(tables={"requests": pd.concat(frames, ignore_index=True),
                                      "summary": summary_frame(rows, ["policy", "runtime", "mode"]),
                                      "errors": pd.DataFrame(errors),
                                      "cold_starts": pd.concat(colds, ignore_index=True) if colds else pd.DataFrame()},
                              documents={"sim_vs_real": meta})
    if interrupted:  # Ctrl-C: what was measured is written, marked incomplete
        raise PartialResult(result, KeyboardInterrupt())
    return result
