"""``experiment=serverless_real``: the seeded workload replayed for real, with the simulator's columns."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.serverless.simulated import build_policy, check_policies, policies_of, workload_cfg
from harness.config import instantiate_option, listed, name_list, option_dict
from harness.executors.base import Executor
from harness.experiment import ExperimentResult, PartialResult
from runtimes.base import Runtime, RuntimeContext
from schedulers.base import Request
from schedulers.catalog import base_name, model_infos
from schedulers.cluster import Cluster, ModelTimes
from schedulers.lifecycle import LifecycleConfig
from schedulers.metrics import summarize, summary_frame
from schedulers.real.config import ProcessConfig, RealConfig
from schedulers.real.controller import Controller
from schedulers.real.processes import ProcessSources
from schedulers.real.tiers import Site, TierOps
from schedulers.workload import RequestArrays, Workload

log = logging.getLogger("coldstart.schedulers.real")

SMOKE_DURATION_S = 20.0


def real_cluster(rc: DictConfig, model_times: dict[str, ModelTimes] | None = None, **overrides: Any) -> Cluster:
    """The cluster model of the real run (what policies estimate with, and what the simulator replays)."""
    g = rc.gbps
    kwargs: dict[str, Any] = {
        "name": "real", "servers": int(rc.servers), "gpus_per_server": int(rc.gpus_per_server),
        "gpu_mem_gb": float(rc.slot_memory_bytes) / 1e9, "gpu_type": "cpu-slot", "dram_gb": float(rc.dram_gb),
        "ssd_gb": float(rc.ssd_gb), "dram_gbps": float(g.dram), "ssd_gbps": float(g.ssd),
        "remote_gbps": float(g.remote), "load_slots": 1, "ssd_replicas": int(rc.ssd_replicas),
        "model_times": model_times if model_times is not None else
        {str(k): ModelTimes(**dict(v)) for k, v in (rc.model_times or {}).items()},
    }
    kwargs.update(overrides)
    return Cluster(**kwargs)


def engine_config(cfg: DictConfig) -> dict[str, Any] | None:
    """The composed ``engine`` option (``engine=compiled engine.mode=...``) as the plain config every instance
    builds after its model, refused here (before any process starts) on a device it cannot run on."""
    if cfg.get("engine") is None:
        return None
    node = cast(dict[str, Any], OmegaConf.to_container(cfg.engine, resolve=True))
    device = "cpu" if str(cfg.device) == "auto" else str(cfg.device)
    instantiate(cfg.engine).check(device)
    return node


def real_config(cfg: DictConfig) -> RealConfig:
    """The controller's option groups from ``real.*``: the lifecycle's knobs (the same the simulator has; sim_vs_real
    simulates with exactly these) and the instance processes'."""
    rc = cfg.real
    device = "cpu" if str(cfg.device) == "auto" else str(cfg.device)
    lifecycle = LifecycleConfig(timeout_s=float(rc.timeout_s), migration_stop_tokens=int(rc.migration_stop_tokens),
                                migration_max_rounds=int(rc.migration_max_rounds),
                                retry_batch=int(rc.get("retry_batch", 8)))
    process = ProcessConfig(call_timeout_s=float(rc.call_timeout_s), decode_chunk=int(rc.decode_chunk),
                            max_request_retries=int(rc.max_request_retries),
                            max_load_failures=int(rc.max_load_failures),
                            slot_threads=int(rc.slot_threads), slot_memory_bytes=int(rc.slot_memory_bytes),
                            device=device, dtype=str(cfg.dtype), engine=engine_config(cfg),
                            engine_prompt_tokens=int(rc.get("engine_prompt_tokens", 16)))  # runs from before it: 16
    drain = 0.0 if bool(cfg.get("smoke", False)) else float(rc.get("drain_s", 30.0))
    return RealConfig(lifecycle, process, drain)


def scaled_requests(reqs: RequestArrays, time_scale: float) -> list[Request]:
    """The workload as wall-clock requests: arrival times × ``time_scale``."""
    return [Request(k, reqs.models[int(m)], float(a) * time_scale, int(i), int(o)) for k, (a, m, i, o) in
            enumerate(zip(reqs.arrival_s, reqs.model_idx, reqs.input_tokens, reqs.output_tokens, strict=True))]


def as_arrays(requests: list[Request], models: tuple[str, ...]) -> RequestArrays:
    """The scaled requests as the simulator's input (the same trace the real run replayed)."""
    idx = {m: k for k, m in enumerate(models)}
    return RequestArrays(np.array([r.arrival_s for r in requests], dtype=float),
                         np.array([idx[r.model] for r in requests], dtype=np.int64), models,
                         np.array([r.input_tokens for r in requests], dtype=np.int64),
                         np.array([r.output_tokens for r in requests], dtype=np.int64))


def model_config(name: str) -> dict[str, Any]:
    """The ``conf/model`` option ``name`` as an instance process instantiates it: a real model's own trial config
    (an absolute path, a hub snapshot pinned to its commit), else the option as composed."""
    own = instantiate_option("model", name).trial_config()
    return cast(dict[str, Any], own) if own is not None else option_dict("model", name)


def model_sources(models: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """Per model of a workload (``opt-1.3b#2`` → its option): where its weights come from (``model_source``
    zoo | local | hf_cache, ``model_path``)."""
    out = {}
    for base in sorted({base_name(m) for m in models}):
        src = instantiate_option("model", base).describe_source()
        out[base] = {"model_source": src["model_source"], "model_path": src["model_path"]}
    return {m: out[base_name(m)] for m in models}


def with_sources(df: pd.DataFrame, sources: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``df`` with ``model_source`` and ``model_path`` columns from its ``model`` column."""
    if "model" not in df:
        return df
    for key in ("model_source", "model_path"):
        df[key] = [sources.get(m, {}).get(key, "") for m in df["model"]]
    return df


def source_summary(sources: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The workload's sources as summary columns: each distinct value once, joined by ``;``."""
    return {key: ";".join(sorted({str(v[key]) for v in sources.values() if v[key]})) for key in
            ("model_source", "model_path")}


def setup_sites(cfg: DictConfig, run_root: Path, dram_root: Path, nodes: list[str] | None = None) -> list[Site]:
    """Where each server's tiers are, each server pinned round-robin to one of ``nodes`` (Ray node resources) when
    there are any. SSD directories are under ``real.ssd_root`` (a node-local disk on a cluster) or, when null, the
    run's."""
    rc = cfg.real
    ssd_root = run_root if rc.get("ssd_root") is None else Path(str(rc.ssd_root)) / dram_root.name
    return [Site(s, ssd_root / f"server{s}" / "ssd", dram_root / f"server{s}", int(float(rc.dram_gb) * 1e9),
                 node=nodes[s % len(nodes)] if nodes else None)
            for s in range(int(rc.servers))]


def runtimes_of(cfg: DictConfig) -> list[str | None]:
    """The runtimes a real run compares: ``runtimes=[fresh,pool]`` by name, or ``[None]`` for the composed
    ``runtime`` option (``runtime=pool``; default fresh)."""
    names = name_list(cfg, "runtimes")
    if not names:
        return [None]
    if len(set(names)) != len(names):
        raise ValueError(f"runtimes={names} lists a runtime twice")
    return list(names)


def check_real(cfg: DictConfig) -> None:
    """Fail before anything runs on an override a real run would ignore (policies, loader, runtime, engine)."""
    named = [n for n in runtimes_of(cfg) if n is not None]
    check_policies(cfg, singles=("loader", "engine") if named else ("loader", "runtime", "engine"),
                   lists={"runtime": named} if named else None)


def build_runtime(cfg: DictConfig, name: str | None) -> Runtime:
    """The named ``conf/runtime`` option (with ``runtime_args.<name>``), or the composed one."""
    node = listed(cfg, "runtime", name) if name is not None else cfg.runtime
    runtime: Runtime = instantiate(node)
    return runtime


def build_controller(cfg: DictConfig, entry: DictConfig, models: tuple[str, ...], run_root: Path,
                     executor: Executor, runtime: Runtime | None = None) -> tuple[Controller, Callable[[], None]]:
    """Fresh servers (checkpoints in the store; the initial SSD copies are made when the run starts) and a
    controller for one policy on ``runtime`` (default: the composed one); the second value removes the tiers."""
    rc, rcfg = cfg.real, real_config(cfg)
    cluster = real_cluster(rc)
    infos = model_infos(list(models), cluster, str(cfg.dtype))
    scheduler, keepalive = build_policy(cfg, entry)
    store = instantiate(cfg.storage)
    model_cfgs = {base_name(m): model_config(base_name(m)) for m in models}
    loader_cfg = OmegaConf.to_container(cfg.loader, resolve=True)
    tiers = TierOps(store, cast(dict[str, dict[str, Any]], model_cfgs), list(models), str(cfg.dtype),
                    str(rc.checkpoint_format), int(cfg.seed), cast(dict[str, Any], loader_cfg))
    dram_root = Path(tempfile.mkdtemp(prefix="coldstart-real-", dir=str(rc.dram_root)))
    nodes = list(rc.nodes) if rc.get("nodes") else executor.nodes()
    sites = setup_sites(cfg, run_root, dram_root, [str(n) for n in nodes])
    tiers.start_agents(sites, executor)

    def cleanup() -> None:
        tiers.cleanup(sites)
        shutil.rmtree(dram_root, ignore_errors=True)

    runtime = runtime if runtime is not None else build_runtime(cfg, None)
    p = rcfg.process
    ctx = RuntimeContext(executor, p.device, [cast(dict[str, Any], loader_cfg)],
                         [model_cfgs[a] for a in sorted(model_cfgs)], p.slot_threads, p.dtype)
    processes = ProcessSources(runtime, executor, p, runtime.host_kwargs(ctx))
    controller = Controller(cluster, infos, scheduler, keepalive, tiers, processes, rcfg)
    return controller, cleanup


def run_policy_real(cfg: DictConfig, entry: DictConfig, requests: list[Request], models: tuple[str, ...],
                    run_root: Path, runtime: str | None = None) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """One policy's real run on fresh servers with the named runtime (``None``: the composed one): (requests
    table, stats, cold starts with their phases)."""
    executor = instantiate(cfg.executor)
    try:
        ctl, cleanup = build_controller(cfg, entry, models, run_root, executor, build_runtime(cfg, runtime))
        t0 = time.perf_counter()
        try:
            requests_df = ctl.run(requests, progress=bool(cfg.progress))
        finally:
            cleanup()
    finally:
        executor.close()
    stats = {**ctl.stats, "wall_s": time.perf_counter() - t0}
    return requests_df, stats, pd.DataFrame(ctl.cold_starts)


def trace(cfg: DictConfig) -> tuple[list[Request], tuple[str, ...]]:
    w = workload_cfg(cfg, False)
    if bool(cfg.smoke):
        w.duration_s = min(float(w.duration_s), SMOKE_DURATION_S)
    workload: Workload = instantiate(w)
    arrays = workload.generate(int(cfg.seed))
    return scaled_requests(arrays, float(cfg.real.time_scale)), tuple(workload.models)


def run_serverless_real(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Every listed policy (or the composed one) × every listed runtime (or the composed one) on the same seeded
    trace, for real."""
    check_real(cfg)
    requests, models = trace(cfg)
    sources = model_sources(models)
    frames, rows, colds = [], [], []
    workers: dict[str, Any] = {}
    interrupted = False
    for name, entry in policies_of(cfg):
        for rt_name in runtimes_of(cfg):
            log.info("%s on runtime %s: %d requests for real on %d servers", name, rt_name or "(composed)",
                     len(requests), int(cfg.real.servers))
            df, stats, cold = run_policy_real(cfg, entry, requests, models,
                                              out_dir / "servers" / f"{name}-{rt_name or 'runtime'}", rt_name)
            runtime = str(stats["runtime"])
            workers[f"{name}/{runtime}"] = {k: v for k, v in stats.items() if k.startswith(("worker", "pool_"))}
            df.insert(0, "runtime", runtime)
            df.insert(0, "policy", name)
            if "runtime" not in cold:  # no cold start happened
                cold.insert(0, "runtime", runtime)
            cold.insert(0, "policy", name)
            frames.append(with_sources(df, sources))
            colds.append(with_sources(cold, sources))
            rows.append({"policy": name, "runtime": runtime, **summarize(df, stats, stats["wall_s"])})
            if stats.get("interrupted"):  # Ctrl-C: write what was measured, run no further policy
                interrupted = True
                break
        if interrupted:
            break
    meta = {"servers": int(cfg.real.servers), "gpus_per_server": int(cfg.real.gpus_per_server),
            "time_scale": float(cfg.real.time_scale), "executor": str(cfg.executor._target_),
            "seed": int(cfg.seed), "requests": len(requests), "runtimes": workers}
    result = ExperimentResult(tables={"requests": pd.concat(frames, ignore_index=True),
                                      "summary": summary_frame(rows, ["policy", "runtime"]).assign(
                                          **source_summary(sources)),
                                      "cold_starts": pd.concat(colds, ignore_index=True)},
                              documents={"serverless_real": meta})
    if interrupted:
        raise PartialResult(result, KeyboardInterrupt())  # Ctrl-C: what was measured is written, marked incomplete
    return result
