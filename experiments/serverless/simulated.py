"""Serverless experiments: simulate a grid of scenarios × policies and return tidy request and summary
tables."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError, check_args, composed_option, listed, run_args
from harness.experiment import ExperimentResult, PartialResult
from schedulers.base import policy_storage
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
    return [(composed_option(cfg, "scheduler"), OmegaConf.create({"inline": True}))]


def check_policies(cfg: DictConfig, singles: tuple[str, ...] = (),
                   lists: dict[str, list[str]] | None = None) -> None:
    """Fail before anything runs on an override the policies would ignore: ``scheduler_args.<option>`` and
    ``keepalive_args.<option>`` must name a listed policy's option; ``scheduler.<key>=...`` needs the composed
    policy (``experiment.policies=null``). ``singles``: other groups the experiment reads as one option;
    ``lists``: other groups it composes by name (``runtimes=[...]``)."""
    entries = [e for _, e in policies_of(cfg) if not e.get("inline")]
    extra = dict(lists or {})
    if entries:
        policy_lists = {"scheduler": [str(e.scheduler) for e in entries],
                        "keepalive": [str(e.get("keepalive", "fixed")) for e in entries]}
        check_args(cfg, {**policy_lists, **extra}, singles=singles)
    else:
        check_args(cfg, extra, singles=("scheduler", "keepalive", *singles))


def storage_settings(cfg: DictConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """``experiment.storage``: setting name → {policy name → scheduler args} (e.g. ``{cache_to: [ssd]}``), each
    setting a full run of every policy on the same workloads; ``{}`` when the experiment names none.

    A policy a setting does not name keeps its entry's storage. Names must be listed policies (else the args would
    be ignored); a key a setting gives wins over the entry's own ``scheduler_args`` for that setting."""
    node = cfg.experiment.get("storage")
    if not node:
        return {}
    raw = OmegaConf.to_container(node, resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"experiment.storage={raw!r}: expected a mapping setting -> {{policy: scheduler args}}")
    names = [n for n, _ in policies_of(cfg)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, per_policy in raw.items():
        setting = str(key)
        per_policy = per_policy or {}
        if not isinstance(per_policy, dict):
            raise ConfigError(f"experiment.storage.{setting}={per_policy!r}: expected {{policy: scheduler args}}")
        for policy in per_policy:
            if policy not in names:
                raise ConfigError(f"experiment.storage.{setting}.{policy}: {policy!r} is not a listed policy "
                                  f"({names}); its storage would be ignored")
        out[str(setting)] = {str(k): dict(v or {}) for k, v in per_policy.items()}
    entries = dict(policies_of(cfg))
    for setting, per_policy in out.items():  # fail before anything runs, not when the clashing setting comes up
        for policy, args in per_policy.items():
            option = str(entries[policy].scheduler)
            clash = sorted(set(run_args(cfg, "scheduler").get(option) or {}) & set(args))
            if clash:
                raise ConfigError(f"scheduler_args.{option} overrides {clash}, which experiment.storage.{setting} "
                                  f"sets for {policy!r}; change experiment.storage instead")
    return out


def build_policy(cfg: DictConfig, entry: DictConfig, storage: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """A fresh (scheduler, keep-alive) pair for one run: keep-alive policies learn, so never share them.
    ``storage``: scheduler args of a storage setting, merged over the entry's ``scheduler_args``."""
    if entry.get("inline"):
        return instantiate(cfg.scheduler), instantiate(cfg.keepalive)
    args = entry.get("scheduler_args")
    if storage:
        args = OmegaConf.merge(args or {}, storage)
    sched = instantiate(listed(cfg, "scheduler", str(entry.scheduler), args))
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


def cache_label(tiers: Iterable[str]) -> str:
    """A policy's ``cache_to`` as one summary cell: ``dram+ssd``, ``ssd``, ``none``."""
    return "+".join(tiers) or "none"


def seeds_of(cfg: DictConfig) -> list[int] | None:
    """``experiment.seeds`` (every scenario once per seed, a ``seed`` column), or None: the run's ``seed`` only."""
    seeds = cfg.experiment.get("seeds")
    return None if seeds is None else [int(x) for x in seeds]


Scenario = tuple[dict[str, Any], DictConfig] | tuple[dict[str, Any], DictConfig, Mapping[str, Any]]


def simulate_grid(cfg: DictConfig, scenarios: Iterable[Scenario]) -> ExperimentResult:
    """Run every policy on every scenario (same seed → same requests for every policy), under every storage
    setting of ``experiment.storage``; collect tidy tables. A scenario may carry cluster overrides (third item).

    The policies' storage (``cache_to``, ``tier_upgrade``) is a key column of both tables."""
    check_policies(cfg)
    settings = storage_settings(cfg)
    seeds = seeds_of(cfg)
    base_cluster: Cluster = instantiate(cfg.cluster)
    cluster = base_cluster
    if cluster.dram_gb == 0:
        log.info("cluster.dram_gb=0: no DRAM tier; loads and demotions that would cache in DRAM go to the SSD")
    sim_cfg = sim_config(cfg)
    resolved: dict[str, dict[str, Any]] = {}
    frames: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    stopped: BaseException | None = None
    try:
        for scenario in scenarios:
            labels, wcfg = scenario[0], scenario[1]
            if len(scenario) > 2:
                over = OmegaConf.merge(cfg.cluster, OmegaConf.create(dict(scenario[2])))
                cluster = instantiate(over)
            workload: Workload = instantiate(wcfg)
            for seed in seeds if seeds is not None else [int(cfg.seed)]:
                reqs = workload.generate(seed)
                infos = model_infos(list(workload.models), cluster, str(cfg.dtype))
                for setting, per_policy in (settings or {"": {}}).items():
                    for name, entry in policies_of(cfg):
                        scheduler, keepalive = build_policy(cfg, entry, per_policy.get(name))
                        cache_to, upgrade = policy_storage(scheduler)
                        resolved.setdefault(setting or "default", {})[name] = {
                            "scheduler": str(entry.get("scheduler", "composed")), "cache_to": list(cache_to),
                            "tier_upgrade": upgrade, "demote_to": list(keepalive.demote_to)}
                        t0 = time.perf_counter()
                        result = Simulator(cluster, infos, scheduler, keepalive, sim_cfg).run(reqs)
                        wall = time.perf_counter() - t0
                        tags = {"policy": name, **({"storage": setting} if settings else {}),
                                **({"seed": seed} if seeds is not None else {}), **labels,
                                "cache_to": cache_label(cache_to), "tier_upgrade": upgrade}
                        keys = list(tags)
                        df = result.requests
                        for k, v in reversed(tags.items()):
                            df.insert(0, k, v)
                        frames.append(df)
                        rows.append({**tags, **summarize(result.requests, result.stats, wall)})
                        log.info("%s %s %s: %d requests, P99 TTFT %.2f s, %.2f s wall", name, setting, labels,
                                 len(reqs), rows[-1]["ttft_s_p99"], wall)
            cluster = base_cluster
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
        "runtime": asdict(cluster.runtime),  # start-up costs (a calibrated cluster's come from its file)
        "seed": int(cfg.seed),
        "smoke": bool(cfg.get("smoke", False)),
        "policies": resolved,  # the storage each policy ran with, per storage setting (composed, not in config.yaml)
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


def run_sllm_regime(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """The regime map: every policy with the same storage over (checkpoint set / DRAM, set / SSD, RPS, SSD
    replicas); the cluster's per-server ``dram_gb`` and ``ssd_gb`` are the set's size divided by the ratios."""
    r, smoke = cfg.experiment.regime, bool(cfg.smoke)
    w0 = workload_cfg(cfg, smoke)
    infos = model_infos(list(w0.models), instantiate(cfg.cluster), str(cfg.dtype))
    set_gb = sum(i.size_bytes for i in infos.values()) / 1e9
    dram, ssd, rps_list, replicas = (list(r.set_over_dram), list(r.set_over_ssd), list(r.rps),
                                     list(r.ssd_replicas))
    if smoke:
        dram, ssd, rps_list, replicas = dram[:2], ssd[:1], rps_list[-1:], replicas[:1]

    def scenarios() -> Iterable[Scenario]:
        for rps in rps_list:
            for rep in replicas:
                for x in dram:
                    for y in ssd:
                        labels = {"set_over_dram": float(x), "set_over_ssd": float(y), "rps": float(rps),
                                  "ssd_replicas": int(rep), "set_gb": round(set_gb, 1)}
                        cluster = {"dram_gb": set_gb / float(x), "ssd_gb": set_gb / float(y), "ssd_replicas": int(rep)}
                        yield labels, workload_cfg(cfg, smoke, rps=rps), cluster

    return simulate_grid(cfg, scenarios())
