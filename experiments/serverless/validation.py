"""``experiment=sim_vs_real``: run a seeded scenario for real, calibrate the simulator from that run's measured
load and inference times, simulate the same trace under the same policy, and report the error per metric."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments.serverless.real import as_arrays, real_cluster, run_policy_real, trace
from experiments.serverless.simulated import build_policy, check_policies, policies_of, sim_config
from harness.experiment import ExperimentResult, PartialResult
from schedulers.catalog import base_name, model_infos
from schedulers.cluster import ModelTimes
from schedulers.metrics import summarize, summary_frame
from schedulers.simulator import Simulator

log = logging.getLogger("coldstart.schedulers.real")

# The metrics compared, how each is computed from a requests table and the run's stats.
METRICS = ("ttft_s_p50", "ttft_s_p99", "cold_starts", "gpu_seconds")


def calibrate(requests: pd.DataFrame, cold: pd.DataFrame) -> tuple[dict[str, float], dict[str, ModelTimes]]:
    """Tier bandwidths and per-architecture times from one real run.

    Bandwidth of a tier = median bytes / (weights + download) seconds of its cold starts (DRAM falls back to
    SSD, SSD to remote, when a tier served none); ``build_s`` = median of what a cold start spent besides the
    bytes (process start, imports, model build, RPC); prefill = least-squares line of measured prefill time on
    prompt tokens; decode = median seconds per decoded token.
    """
    gbps: dict[str, float] = {}
    if len(cold):
        cold = cold.assign(moved_s=cold["weights_s"] + cold["download_s"].fillna(0.0))
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
        build = float(np.median(c["load_s"] - c["moved_s"])) if len(c) else 0.0
        d = done[done["model"].map(base_name) == arch]
        prefill_slope, prefill_base, decode = None, None, None
        if len(d) >= 2 and d["input_tokens"].nunique() > 1:
            slope, base = np.polyfit(d["input_tokens"].to_numpy(float), d["prefill_s"].to_numpy(float), 1)
            prefill_slope, prefill_base = max(float(slope), 0.0), max(float(base), 0.0)
        elif len(d):
            prefill_base = float(d["prefill_s"].median())
        steps = d[d["output_tokens"] > 1]
        if len(steps):
            decode = float(np.median(steps["decode_s"] / (steps["output_tokens"] - 1)))
        times[arch] = ModelTimes(build_s=max(build, 0.0), first_token_s=prefill_base,
                                 prefill_s_per_token=prefill_slope, decode_s_per_token=decode)
    return gbps, times


def metric_values(requests: pd.DataFrame, stats: dict[str, float]) -> dict[str, float]:
    ttft = requests["ttft_s"].to_numpy(float)
    return {"ttft_s_p50": float(np.percentile(ttft, 50)), "ttft_s_p99": float(np.percentile(ttft, 99)),
            "cold_starts": float(requests["cold_start"].sum()), "gpu_seconds": float(stats.get("gpu_seconds", 0))}


def run_sim_vs_real(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """For each policy: real run → calibration → simulation of the same trace → per-metric relative error."""
    check_policies(cfg, singles=("loader",))
    requests, models = trace(cfg)
    frames, rows, colds = [], [], []
    interrupted = False
    errors: list[dict[str, Any]] = []
    calib: dict[str, Any] = {}
    policies = policies_of(cfg)[:1] if bool(cfg.smoke) else policies_of(cfg)
    for name, entry in policies:
        log.info("%s: %d requests for real", name, len(requests))
        real_df, real_stats, cold = run_policy_real(cfg, entry, requests, models, out_dir / "servers" / name)
        if real_stats.get("interrupted"):  # Ctrl-C: keep what was measured, simulate nothing more
            real_df.insert(0, "mode", "real")
            real_df.insert(0, "policy", name)
            frames.append(real_df)
            rows.append({"policy": name, "mode": "real", **summarize(real_df, real_stats, real_stats["wall_s"])})
            interrupted = True
            break
        gbps, times = calibrate(real_df, cold)
        cluster = real_cluster(cfg.real, model_times=times, dram_gbps=gbps["dram"], ssd_gbps=gbps["ssd"],
                               remote_gbps=gbps["remote"], name="calibrated-from-real")
        infos = model_infos(list(models), cluster, str(cfg.dtype))
        scheduler, keepalive = build_policy(cfg, entry)
        sim_cfg = sim_config(cfg)
        t0 = time.perf_counter()
        sim = Simulator(cluster, infos, scheduler, keepalive, sim_cfg).run(as_arrays(requests, models))
        sim_wall = time.perf_counter() - t0
        sim_df = sim.requests.copy()
        for mode, df, stats, wall in (("real", real_df, real_stats, real_stats["wall_s"]),
                                      ("sim", sim_df, sim.stats, sim_wall)):
            df.insert(0, "mode", mode)
            df.insert(0, "policy", name)
            frames.append(df)
            rows.append({"policy": name, "mode": mode, **summarize(df, stats, wall)})
        real_m, sim_m = metric_values(real_df, real_stats), metric_values(sim_df, sim.stats)
        for metric in METRICS:
            r, s = real_m[metric], sim_m[metric]
            errors.append({"policy": name, "metric": metric, "real": r, "sim": s,
                           "rel_error": abs(s - r) / r if r else float("nan")})
        cold.insert(0, "policy", name)
        colds.append(cold)
        calib[name] = {"gbps": gbps, "model_times": {k: vars(v) for k, v in times.items()}}
        log.info("%s: %s", name, {e["metric"]: round(float(e["rel_error"]), 3) for e in errors if e["policy"] == name})
    meta: dict[str, Any] = {"calibration": calib, "servers": int(cfg.real.servers),
                            "time_scale": float(cfg.real.time_scale), "requests": len(requests),
                            "executor": str(cfg.executor._target_), "seed": int(cfg.seed)}
    result = ExperimentResult(tables={"requests": pd.concat(frames, ignore_index=True),
                                      "summary": summary_frame(rows, ["policy", "mode"]),
                                      "errors": pd.DataFrame(errors),
                                      "cold_starts": pd.concat(colds, ignore_index=True) if colds else pd.DataFrame()},
                              documents={"sim_vs_real": meta})
    if interrupted:  # Ctrl-C: what was measured is written, marked incomplete
        raise PartialResult(result, KeyboardInterrupt())
    return result
