"""``experiment=pipeline_real``: calibrate real servers, then run PETALS and CG-BP + WS-RR for real and simulated."""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.placement.bprr import check_policies, option_name, policy_option
from experiments.placement.scenario import auto_concurrency, block_counts_by_type
from harness.config import ConfigError
from harness.executors.base import Executor
from harness.experiment import ExperimentResult, PartialResult
from harness.realmodel import RealModel
from harness.zoo import ModelSpec
from placement.base import Network, Placement, Problem, Router
from placement.real.blocks import ClientParts, build_full, chain_spec, one_process_greedy
from placement.real.calibration import Calibration, calibrate, in_situ
from placement.real.client import ChainClient
from placement.real.deployment import (
    HostFactory,
    RealServerType,
    deploy,
    real_types,
    run_workload,
    seeded_prompts,
    server_configs,
)
from placement.real.hosting import InProcessHost, WorkerHost
from placement.real.server import real_block_model
from placement.simulator import ServerCompute, poisson_arrivals, simulate

log = logging.getLogger("coldstart.pipeline_real")

SIM_MODES = ("sim", "sim_in_situ", "sim_contended")


def _settings(cfg: DictConfig) -> DictConfig:
    """``cfg.pipeline`` with the smoke shrink applied (a copy: configs never change after start)."""
    p = OmegaConf.create(OmegaConf.to_container(cfg.pipeline, resolve=False))
    assert isinstance(p, DictConfig)
    if cfg.get("smoke", False):
        p.merge_with(p.get("smoke_overrides") or {})
    for key in ("input_tokens", "max_tokens", "num_requests", "calibration_blocks", "calibration_reps", "r_max"):
        if not (isinstance(p[key], int) and p[key] >= 1):
            raise ValueError(f"pipeline.{key}={p[key]!r} is invalid; allowed: an integer >= 1")
    if not p.arrival_rate_per_s > 0:
        raise ValueError(f"pipeline.arrival_rate_per_s={p.arrival_rate_per_s!r} is invalid; allowed: > 0")
    cap = p.get("sim_server_capacity", "threads")
    if not (cap in ("threads", "measured") or (isinstance(cap, int) and cap >= 1)):
        raise ValueError(f"pipeline.sim_server_capacity={cap!r} is invalid; allowed: threads, measured or an "
                         "integer >= 1")
    if len(p.server_types) != 2:
        raise ValueError(f"pipeline.server_types has {len(p.server_types)} types; allowed: exactly 2 (the "
                         "clustered topology's cluster-1 and cluster-2 types, in that order)")
    return p


def _spec(cfg: DictConfig, p: DictConfig) -> ModelSpec:
    """The chain's model: a zoo model reshaped by ``pipeline.num_layers`` / ``hf_overrides``, or a real model as it
    is (its blocks are its own decoder layers, its weights its files')."""
    model = instantiate(cfg.model)
    overrides = dict(p.get("hf_overrides") or {})
    if isinstance(model, RealModel):  # the reshape keys are the zoo model's; typed for a real one, they are an error
        typed = [ov for ov in (HydraConfig.get().overrides.task if HydraConfig.initialized() else [])
                 if ov.lstrip("+~").startswith(("pipeline.num_layers", "pipeline.hf_overrides"))
                 and not ov.endswith(("=null", "={}"))]
        if typed:
            raise ConfigError(f"{typed} reshape a zoo model; model {model.name} is a real checkpoint whose blocks are "
                              f"its own {model.num_layers} decoder layers: drop them")
        log.info("model %s is a real checkpoint: its own %d layers are the blocks (pipeline.num_layers and "
                 "hf_overrides reshape zoo models only)", model.name, model.num_layers)
        return model
    spec = chain_spec(model, p.get("num_layers"))
    return replace(spec, hf_config={**spec.hf_config, **overrides}) if overrides else spec


def server_compute(net: Network, real: dict[str, RealServerType], cal: Calibration, capacity: str | int
                   ) -> ServerCompute:
    """The simulator's compute model of the real servers (``sim_contended``), from what a block server does.

    Capacity: ``threads`` = the type's thread budget: a server computes that many hops at once (one torch
    thread; its call threads are serialized by the interpreter, which calibration's ``parallelism`` column
    measures); ``measured`` = that measured parallelism, rounded (at least 1); or a fixed integer. Busy share
    1/slowdown: the emulated slowdown sleeps after computing and holds nothing. Fixed busy time: the type's
    measured per-call intercept (server time that does not grow with blocks), which queues with the blocks.
    """
    rows = {r["server_type"]: r for r in cal.rows}
    caps, shares, fixed, pre_fixed = [], [], [], []
    for server in net.servers:
        t, r = real[server.name], rows.get(server.name, {})
        if capacity == "threads":
            caps.append(t.threads)
        elif capacity == "measured":
            caps.append(max(1, round(float(r.get("parallelism", 1.0)))))
        else:
            caps.append(int(capacity))
        shares.append(1.0 / t.slowdown)
        fixed.append(float(r.get("decode_intercept_s", 0.0)))
        pre_fixed.append(float(r.get("prefill_intercept_s", 0.0)))
    return ServerCompute(tuple(caps), tuple(shares), tuple(fixed), tuple(pre_fixed))


def overlaps(hops: pd.DataFrame) -> pd.DataFrame:
    """Measured contention between sessions on the real servers: per policy and server type, the share of
    decode hops whose server call overlapped another session's call on the same server (call intervals as the
    client saw them, relay included: an upper bound), and the busy time per block with and without overlap."""
    rows = []
    dec = hops[(hops["step"] > 0) & (~hops["replay"])]
    for (policy, kind), g in dec.groupby(["policy", "server_type"], sort=False):
        hit = np.zeros(len(g), dtype=bool)
        for _, s in g.groupby("server"):
            idx = np.flatnonzero(g.index.isin(s.index))
            a, b, rid = (s["call_start_s"].to_numpy(), s["call_end_s"].to_numpy(), s["request_id"].to_numpy())
            for n, i in enumerate(idx):
                hit[i] = bool(np.any((a < b[n]) & (b > a[n]) & (rid != rid[n])))
        per_block = (g["busy_s"] / (g["last"] - g["first"])).to_numpy()
        rows.append({"policy": policy, "server_type": kind, "decode_hops": len(g),
                     "overlapped_pct": 100 * float(hit.mean()),
                     "busy_per_block_s_mean": float(per_block.mean()),
                     "busy_per_block_s_overlapped": float(per_block[hit].mean()) if hit.any() else float("nan"),
                     "busy_per_block_s_alone": float(per_block[~hit].mean()) if (~hit).any() else float("nan")})
    return pd.DataFrame(rows)


def _fault(client: ChainClient, placement: Placement, prompt: list[int], max_tokens: int, reference: list[int],
           hosts: dict[int, Any]) -> dict[str, Any]:
    """Kill the first server of a session's route mid-session; the client re-routes and replays."""
    killed: list[int] = []

    def hook(step: int) -> None:
        if step == max_tokens // 2 - 1 and not killed:
            servers = client.running_servers()[0]
            victim = min(servers)
            hosts[victim].kill()
            killed.append(victim)

    res = client.generate(10_000, prompt, max_tokens, after_token=hook)
    replays = [h for h in res.hops if h["replay"]]
    return {"killed_server": killed[0] if killed else -1, "killed_after_tokens": max_tokens // 2,
            "reroutes": res.reroutes, "tokens_match": res.tokens == reference, "path_at_start": res.path,
            "replacement_servers": ",".join(str(h["server"]) for h in replays),
            "replay_hops": len(replays), "replay_tokens": replays[0]["tokens"] if replays else 0,
            "service_s": res.service_s}


def _summary(requests: pd.DataFrame) -> pd.DataFrame:
    """Per policy: mean per-token time and TTFT, real and simulated (isolated and in-situ calibration, and the
    isolated one with server compute contention), and the simulator's relative error |sim − real| / real."""
    rows = []
    for policy, g in requests.groupby("policy", sort=False):
        real = g[g["mode"] == "real"]
        row: dict[str, Any] = {"policy": policy, "requests": len(real)}
        for metric in ("per_token_s", "ttft_s", "wait_s"):
            r = float(real[metric].mean())
            row[f"real_{metric}_mean"] = r
            for mode in SIM_MODES:
                s = float(g[g["mode"] == mode][metric].mean())
                row[f"{mode}_{metric}_mean"] = s
                if metric != "wait_s":
                    row[f"{mode}_{metric}_error_pct"] = 100 * abs(s - r) / r
        row["tokens_match_reference"] = bool(real["tokens_match"].all())
        rows.append(row)
    return pd.DataFrame(rows)


def _advantage(summary: pd.DataFrame, petals: str, proposed: str) -> pd.DataFrame:
    """The proposed method's reduction of mean per-token time vs PETALS, measured and predicted."""
    out = []
    for mode in ("real", *SIM_MODES):
        by = dict(zip(summary["policy"], summary[f"{mode}_per_token_s_mean"], strict=True))
        p, q = float(by[petals]), float(by[proposed])
        out.append({"mode": mode, "petals_per_token_s": p, "proposed_per_token_s": q,
                    "reduction_pct": 100 * (1 - q / p)})
    return pd.DataFrame(out)


def run_pipeline_real(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Calibrate τ, τ^I per server type, then per policy: place, simulate, deploy for real, replay the workload."""
    p = _settings(cfg)
    check_policies(cfg, p.policies, singles=("model", "topology"))
    seed, smoke = int(cfg.seed), bool(cfg.get("smoke", False))
    spec = _spec(cfg, p)
    dtype = str(p.dtype)
    real = real_types(OmegaConf.to_container(p.server_types))  # type: ignore[arg-type]
    parts = ClientParts(build_full(spec, seed, dtype))
    executor: Executor | None = None if smoke else instantiate(cfg.executor)
    if executor is not None:
        executor.connect()  # here: ray.init must run in the main thread, servers start in a pool
    host: HostFactory = InProcessHost if smoke else partial(WorkerHost, executor=executor,
                                                             num_cpus=p.get("worker_num_cpus"))
    try:
        return _run(cfg, p, spec, real, parts, host, seed, dtype)
    finally:
        if executor is not None:
            executor.close()


def _run(cfg: DictConfig, p: DictConfig, spec: ModelSpec, real: dict[str, Any], parts: ClientParts,
         host: HostFactory, seed: int, dtype: str) -> ExperimentResult:
    l_in, l_max = int(p.input_tokens), int(p.max_tokens)
    log.info("calibrating %d server types", len(real))
    cal = calibrate(spec, real, host, parts, l_in, l_max, int(p.calibration_blocks), int(p.calibration_reps), seed,
                    dtype)
    names = list(real)
    extra = {n: {k: getattr(t, k) for k in ("mem_gb", "tau_s", "tau_in_slope_s", "tau_in_base_s", "max_blocks",
                                            "inference_rps", "network_rps")} for n, t in cal.types.items()}
    net = instantiate(cfg.topology, a100_type=names[0], mig_type=names[1], extra_server_types=extra
                      ).build(np.random.default_rng(seed))
    compute = server_compute(net, real, cal, p.get("sim_server_capacity", "threads"))
    clients = [c for c, g in enumerate(net.client_groups) if g == int(p.client_group)] or [0]
    base = Problem(real_block_model(spec, dtype), net, l_in, l_max, 1, cal.overheads)
    rate = float(p.arrival_rate_per_s)
    design = (auto_concurrency(base, clients, rate, int(p.r_max)) if str(p.design_concurrency) == "auto"
              else int(p.design_concurrency))
    problem = replace(base, design_concurrency=design)
    arrivals = poisson_arrivals(np.random.default_rng([seed, 2]), rate, int(p.num_requests), clients)
    vocab = int(spec.config().vocab_size)
    prompts = seeded_prompts(np.random.default_rng([seed, 3]), len(arrivals), l_in, vocab)
    reference_model = build_full(spec, seed, dtype)
    references = [one_process_greedy(reference_model, pr, l_max) for pr in prompts]
    warm = int(p.warmup_requests)
    warm_arrivals = poisson_arrivals(np.random.default_rng([seed, 4]), rate, warm, clients) if warm else []
    warm_prompts = seeded_prompts(np.random.default_rng([seed, 5]), warm, l_in, vocab)
    frames, hop_frames, placements, faults = [], [], [], []
    situ_cal: list[dict[str, Any]] = []
    policies = list(p.policies)
    stopped: BaseException | None = None
    try:
        for idx, spec_p in enumerate(policies):
            name = str(spec_p.name)
            placement_cfg, routing_cfg = policy_option(cfg, spec_p, "placement"), policy_option(cfg, spec_p, "routing")
            placement: Placement = instantiate(placement_cfg).place(problem, np.random.default_rng([seed, 1]))
            router: Router = instantiate(routing_cfg)
            sim_rows, _ = simulate(problem, placement, router, arrivals)
            sim = pd.DataFrame(sim_rows).assign(mode="sim", reroutes=0, tokens_match=True)
            # The same, with each server's compute bounded as the real one is: hops of concurrent sessions queue.
            cont_rows, _ = simulate(problem, placement, router, arrivals, compute=compute)
            contended = pd.DataFrame(cont_rows).assign(mode="sim_contended", reroutes=0, tokens_match=True)
            configs = server_configs(problem, placement, real, seed, dtype)
            log.info("%s: %d servers, placement start=%s count=%s", name, len(configs), placement.start,
                     placement.count)
            with deploy(spec, configs, host) as hosts:
                chain = {c: ChainClient(parts, problem, placement, router, hosts, client=c)
                         for c in sorted(set(clients))}
                warm_rows, warm_hops, _ = run_workload(chain, warm_arrivals, warm_prompts, l_max) if warm_arrivals \
                    else ([], [], [])
                rows, hops, tokens = run_workload(chain, arrivals, prompts, l_max)
                if bool(p.fault) and idx == len(policies) - 1:
                    faults.append({"policy": name, **_fault(chain[clients[0]], placement, prompts[0], l_max,
                                                             references[0], hosts)})
                for c in chain.values():
                    c.close()
            # The same workload simulated with τ, τ^I and overheads re-fitted on this deployment's warm-up requests.
            situ = in_situ(warm_hops, warm_rows, [s.name for s in net.servers], cal, l_in, l_max)
            situ_net = Network(tuple(situ.types[s.name] for s in net.servers), net.clients, net.client_rtt_s,
                               net.server_rtt_s, net.client_groups)
            situ_problem = replace(problem, network=situ_net, overheads=situ.overheads)
            situ_rows, _ = simulate(situ_problem, placement, router, arrivals)
            situ_sim = pd.DataFrame(situ_rows).assign(mode="sim_in_situ", reroutes=0, tokens_match=True)
            situ_cal.extend({"policy": name, **r} for r in situ.rows)
            matches = [t == references[r["request_id"]] for t, r in zip(tokens, rows, strict=True)]
            measured = pd.DataFrame(rows).assign(mode="real", tokens_match=matches)
            both = pd.concat([measured, sim, situ_sim, contended], ignore_index=True)
            both = both.assign(policy=name, placement=option_name(placement_cfg._target_),
                               routing=option_name(routing_cfg._target_))
            frames.append(both)
            hop_frame = pd.DataFrame(hops).assign(policy=name)
            hop_frame["server_type"] = [net.servers[j].name for j in hop_frame["server"]]
            hop_frames.append(hop_frame)
            placements.append({"policy": name, "design_concurrency": design, "start": list(placement.start),
                               "count": list(placement.count), "cache_slots": list(placement.cache_slots),
                               **block_counts_by_type(problem, placement)})
    except BaseException as exc:  # Ctrl-C or a failure: the finished policies are kept (status: incomplete)
        if not frames:
            raise
        stopped = exc
    requests = pd.concat(frames, ignore_index=True)
    source = {k: spec.describe_source()[k] for k in ("model_source", "model_path")}
    summary = _summary(requests).assign(model=spec.name, **source, **spec.dtype_info(dtype))
    all_hops = pd.concat(hop_frames, ignore_index=True)
    tables = {"requests": requests, "hops": all_hops, "summary": summary, "overlaps": overlaps(all_hops),
              "calibration": pd.DataFrame(cal.rows), "calibration_in_situ": pd.DataFrame(situ_cal),
              "placements": pd.DataFrame(placements),
              "faults": pd.DataFrame(faults)}
    if len(policies) >= 2 and stopped is None:  # a stopped run may lack the last policy's rows
        tables["advantage"] = _advantage(summary, str(policies[0].name), str(policies[-1].name))
    docs = {"pipeline": OmegaConf.to_container(p, resolve=True),
            "model": {"name": spec.name, **spec.describe_source(), **spec.dtype_info(dtype), **spec.hf_config},
            "sim_contended": {"capacity": list(compute.capacity), "busy_share": list(compute.busy_share),
                              "fixed_busy_s": list(compute.fixed_busy_s),
                              "prefill_fixed_busy_s": list(compute.prefill_fixed_busy_s)}}
    result = ExperimentResult(tables=tables, documents=docs)  # type: ignore[arg-type]
    if stopped is not None:
        raise PartialResult(result, stopped) from stopped
    return result
