"""Serverless experiments: simulate a grid of scenarios × policies and return tidy request and summary
tables."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.config import check_args, listed
from harness.experiment import ExperimentResult, PartialResult
from schedulers.catalog import model_infos
from schedulers.cluster import Cluster
from schedulers.metrics import summarize, summary_frame
from schedulers.simulator import SimConfig, Simulator
from schedulers.workload import Workload

log = logging.getLogger("coldstart.schedulers")

SMOKE_DURATION_S = 120.0
SMOKE_MODELS = 4


def policies_of(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The policies to compare: ``experiment.policies`` entries, or the composed ``scheduler`` +
    ``keepalive``."""
    entries = cfg.experiment.get("policies")
    if entries:
        return [(str(e.name), e) for e in entries]
    name = str(cfg.scheduler._target_).rsplit(".", 1)[-1]
    return [(name, OmegaConf.create({"inline": True}))]


def check_policies(cfg: DictConfig, singles: tuple[str, ...] = ()) -> None:
    """Fail before anything runs on an override the policies would ignore: ``scheduler_args.<option>`` and
    ``keepalive_args.<option>`` must name a listed policy's option; ``scheduler.<key>=...`` needs the composed
    policy (``experiment.policies=null``). ``singles``: other groups the experiment reads as one option."""
    entries = [e for _, e in policies_of(cfg) if not e.get("inline")]
    if entries:
        lists = {"scheduler": [str(e.scheduler) for e in entries],
                 "keepalive": [str(e.get("keepalive", "fixed")) for e in entries]}
        check_args(cfg, lists, singles=singles)
    else:
        check_args(cfg, {}, singles=("scheduler", "keepalive", *singles))


def build_policy(cfg: DictConfig, entry: DictConfig) -> tuple[Any, Any]:
    """A fresh (scheduler, keep-alive) pair for one run: keep-alive policies learn, so never share them."""
    if entry.get("inline"):
        return instantiate(cfg.scheduler), instantiate(cfg.keepalive)
    sched = instantiate(listed(cfg, "scheduler", str(entry.scheduler), entry.get("scheduler_args")))
    keep = instantiate(listed(cfg, "keepalive", str(entry.get("keepalive", "fixed")), entry.get("keepalive_args")))
    return sched, keep


def workload_cfg(cfg: DictConfig, smoke: bool, **overrides: Any) -> DictConfig:
    """The composed workload with scenario ``overrides``; smoke runs keep few models and two minutes of
    arrivals."""
    w = OmegaConf.merge(cfg.workload, OmegaConf.create(overrides))
    assert isinstance(w, DictConfig)
    if smoke:
        w.models = list(w.models)[:SMOKE_MODELS]
        w.duration_s = min(float(w.duration_s or SMOKE_DURATION_S), SMOKE_DURATION_S)
        w.num_requests = None if w.num_requests is None else min(int(w.num_requests), 200)
    return w


def sim_config(cfg: DictConfig) -> SimConfig:
    return SimConfig(**OmegaConf.to_container(cfg.get("sim", {}) or {}, resolve=True))  # type: ignore[arg-type]


def simulate_grid(
    cfg: DictConfig, scenarios: Iterable[tuple[dict[str, Any], DictConfig]]
) -> ExperimentResult:
    """Run every policy on every scenario (same seed → same requests for every policy); collect tidy
    tables."""
    check_policies(cfg)
    cluster: Cluster = instantiate(cfg.cluster)
    sim_cfg = sim_config(cfg)
    frames: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    stopped: BaseException | None = None
    try:
        for labels, wcfg in scenarios:
            workload: Workload = instantiate(wcfg)
            reqs = workload.generate(int(cfg.seed))
            infos = model_infos(list(workload.models), cluster, str(cfg.dtype))
            for name, entry in policies_of(cfg):
                scheduler, keepalive = build_policy(cfg, entry)
                t0 = time.perf_counter()
                result = Simulator(cluster, infos, scheduler, keepalive, sim_cfg).run(reqs)
                wall = time.perf_counter() - t0
                tags = {"policy": name, **labels}
                keys = list(tags)
                df = result.requests
                for k, v in reversed(tags.items()):
                    df.insert(0, k, v)
                frames.append(df)
                rows.append({**tags, **summarize(result.requests, result.stats, wall)})
                log.info("%s %s: %d requests, P99 TTFT %.2f s, %.2f s wall", name, labels, len(reqs),
                         rows[-1]["ttft_s_p99"], wall)
    except BaseException as exc:  # Ctrl-C or a failure: the finished simulations are kept (status: incomplete)
        if not rows:
            raise
        stopped = exc
    nonempty = [f for f in frames if len(f)] or frames[:1]
    requests = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame()
    meta = {
        "cluster": cluster.name,
        "servers": cluster.servers,
        "gpus_per_server": cluster.gpus_per_server,
        "seed": int(cfg.seed),
        "smoke": bool(cfg.get("smoke", False)),
    }
    grid = ExperimentResult(
        tables={"requests": requests, "summary": summary_frame(rows, keys)}, documents={"serverless": meta}
    )
    if stopped is not None:
        raise PartialResult(grid, stopped) from stopped
    return grid


def run_serverless(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """One workload on one cluster, for every listed policy (or the composed scheduler + keep-alive)."""
    w = workload_cfg(cfg, bool(cfg.smoke))
    return simulate_grid(cfg, [({"scenario": "base", "rps": w.rps}, w)])


def run_sllm_scheduler(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """ServerlessLLM §7 scheduler study: RPS sweep at a fixed CV and CV sweep at a fixed RPS, short and long
    requests."""
    s, smoke = cfg.experiment.sweep, bool(cfg.smoke)
    rps_list, cv_list, tokens = list(s.rps), list(s.cv), dict(s.tokens)
    if smoke:
        rps_list, cv_list, tokens = rps_list[-2:], cv_list[:1], dict(list(tokens.items())[:1])

    def scenarios() -> Iterable[tuple[dict[str, Any], DictConfig]]:
        for tname, tok in tokens.items():
            for rps in rps_list:
                yield (
                    {"scenario": "rps", "tokens": tname, "rps": float(rps), "cv": float(s.base_cv)},
                    workload_cfg(cfg, smoke, rps=rps, arrivals={"cv": s.base_cv}, tokens=tok),
                )
            for cv in cv_list:
                yield (
                    {"scenario": "cv", "tokens": tname, "rps": float(s.base_rps), "cv": float(cv)},
                    workload_cfg(cfg, smoke, rps=s.base_rps, arrivals={"cv": cv}, tokens=tok),
                )

    return simulate_grid(cfg, scenarios())


def run_sllm_e2e(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """ServerlessLLM end to end: one model family at a time (OPT-6.7B/13B/30B replicas) vs Ray Serve and
    KServe."""
    e, smoke = cfg.experiment.e2e, bool(cfg.smoke)
    models = list(e.models)[:1] if smoke else list(e.models)
    return simulate_grid(
        cfg,
        (
            (
                {"scenario": "model", "family": m, "rps": float(cfg.workload.rps)},
                workload_cfg(cfg, smoke, models=[f"{m}#{k}" for k in range(int(e.replicas))]),
            )
            for m in models
        ),
    )


def run_keepalive(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Cold-start rate vs wasted (idle) GPU memory-time for fixed windows and the hybrid histogram."""
    w = workload_cfg(cfg, bool(cfg.smoke))
    return simulate_grid(cfg, [({"scenario": "keepalive", "rps": w.rps}, w)])
