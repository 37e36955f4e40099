"""Experiments: Table III (clustered), scattered Topology Zoo runs and the generic placement experiment."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from experiments.placement.scenario import SCENARIO_KEYS, Policy, auto_concurrency, run_policy, summarize
from harness.config import ConfigError, check_args, listed, options
from harness.experiment import ExperimentResult, PartialResult
from placement.base import InfeasiblePlacementError, Network, NoRouteError, Problem
from placement.catalog import block_model

log = logging.getLogger("coldstart.placement")

# Sun, He, Ji, Parag, Table III: (client cluster, λ/s, l_max) → (PETALS, proposed) mean per-token time (s).
PAPER_TABLE3: dict[tuple[int, float, int], tuple[float, float]] = {
    (0, 0.1, 64): (6.23, 1.92),
    (0, 0.1, 128): (4.76, 1.43),
    (0, 0.5, 64): (6.28, 2.00),
    (0, 0.5, 128): (5.14, 1.34),
    (1, 0.1, 64): (5.44, 1.78),
    (1, 0.1, 128): (4.60, 1.04),
    (1, 0.5, 64): (5.56, 1.88),
    (1, 0.5, 128): (4.79, 1.11),
    (2, 0.1, 64): (5.30, 1.79),
    (2, 0.1, 128): (4.85, 1.31),
    (2, 0.5, 64): (5.34, 1.94),
    (2, 0.5, 128): (5.25, 1.37),
}


def option_name(target: str) -> str:
    """The option name of a ``_target_`` (option name = file stem): ``placement.ws_rr.WsRrRouter`` → ``ws_rr``."""
    parts = str(target).rsplit(".", 2)
    return parts[-2] if len(parts) >= 2 else parts[-1]


def policy_option(cfg: DictConfig, entry: Any, group: str) -> DictConfig:
    """A policy entry's ``placement`` or ``routing``: an option name composed by Hydra (with the entry's
    ``<group>_args`` and the run's ``<group>_args.<name>``), or the run's composed single option (a mapping)."""
    chosen = entry[group]
    if isinstance(chosen, str):
        return listed(cfg, group, chosen, entry.get(f"{group}_args"))
    node = OmegaConf.create(chosen)
    assert isinstance(node, DictConfig)
    return node


def check_policies(cfg: DictConfig, entries: Any, lists: dict[str, list[str]] | None = None,
                   singles: tuple[str, ...] = ()) -> None:
    """Fail before anything runs on an override the policy entries would ignore (``placement_args.<option>``,
    ``routing_args.<option>``); ``lists``/``singles``: the experiment's other groups (see ``check_args``)."""
    named = {g: [str(e[g]) for e in entries if isinstance(e[g], str)] for g in ("placement", "routing")}
    check_args(cfg, {**{g: v for g, v in named.items() if v}, **(lists or {})}, singles=singles)


def _policies(cfg: DictConfig, spec: Any, delays_on: bool, b: DictConfig) -> list[Policy]:
    out = []
    for p in spec:
        if p.delay not in ("petals", "proposed"):
            raise ValueError(f"bprr.policies[{p.name}].delay={p.delay!r} is invalid; allowed: petals, proposed")
        delay = float(b.allocation_delay_petals_s if p.delay == "petals" else b.allocation_delay_proposed_s)
        placement, routing = policy_option(cfg, p, "placement"), policy_option(cfg, p, "routing")
        out.append(
            Policy(
                str(p.name),
                instantiate(placement),
                instantiate(routing, allocation_delay_s=delay if delays_on else 0.0),
                option_name(placement._target_),
                option_name(routing._target_),
            )
        )
    return out


def _bad(key: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"bprr.{key}={value!r} is invalid; allowed: {allowed}")


def validate_bprr(b: DictConfig) -> None:
    """Check the ``bprr`` keys before any simulation: ValueError naming the key, the value and what is allowed."""
    for key in ("monte_carlo_runs", "num_requests", "input_tokens", "r_max"):
        if key in b and not (isinstance(b[key], int) and b[key] >= 1):
            raise _bad(key, b[key], "an integer >= 1")
    rates = list(b.get("arrival_rates_per_s", [1.0]))
    if not rates or any(not isinstance(r, int | float) or r <= 0 for r in rates):
        raise _bad("arrival_rates_per_s", rates, "a non-empty list of rates > 0 per second")
    lengths = list(b.get("max_tokens", [1]))
    if not lengths or any(not isinstance(m, int) or m < 1 for m in lengths):
        raise _bad("max_tokens", lengths, "a non-empty list of integers >= 1")
    r = b.get("design_concurrency", "auto")
    if str(r) != "auto" and not (isinstance(r, int) and r >= 1):
        raise _bad("design_concurrency", r, "auto or an integer >= 1")
    for key in ("allocation_delay_proposed_s", "allocation_delay_petals_s"):
        if key in b and not b[key] >= 0:
            raise _bad(key, b[key], ">= 0 seconds")
    groups = list(b.get("client_clusters", [0]))
    if not groups or any(g not in (0, 1, 2) for g in groups):
        raise _bad("client_clusters", groups, "a non-empty subset of [0, 1, 2]")
    if "num_servers" in b and not (isinstance(b.num_servers, int) and b.num_servers >= 1):
        raise _bad("num_servers", b.num_servers, "an integer >= 1 (C)")
    if "a100_fraction" in b and not 0 <= b.a100_fraction <= 1:
        raise _bad("a100_fraction", b.a100_fraction, "0 <= eta <= 1")


def _grid(cfg: DictConfig) -> DictConfig:
    """``cfg.bprr`` with the smoke shrink applied (a copy: configs never change after start), validated."""
    b = OmegaConf.create(OmegaConf.to_container(cfg.bprr, resolve=True))
    assert isinstance(b, DictConfig)
    if cfg.get("smoke", False):
        shrink = b.get("smoke_overrides") or {}
        replaced = {k: (b.get(k), v) for k, v in shrink.items() if b.get(k) != v}
        if replaced:
            log.info("smoke=true shrinks the grid: %s", ", ".join(f"bprr.{k}: {old} -> {new}"
                                                                 for k, (old, new) in replaced.items()))
        b.merge_with(shrink)
    validate_bprr(b)
    return b


def _concurrency(b: DictConfig, problem: Problem, clients: list[int], rate: float) -> int:
    if str(b.design_concurrency) == "auto":
        try:
            return auto_concurrency(problem, clients, rate, int(b.r_max))
        except InfeasiblePlacementError as exc:
            # T1 needs a placement for one request; without one every policy of the cell fails on its own
            # (a failure row each) instead of the whole sweep job stopping here.
            log.warning("design_concurrency=auto: no placement even for |R| = 1, using 1 (%s)", exc)
            return 1
    return int(b.design_concurrency)


def _fast_share(topo: Any, net: Network) -> float:
    """Share of the network's servers of the topology's fast type (``a100_type``, whatever it is named); NaN for a
    topology that names none."""
    fast = getattr(topo, "fast_type", None)
    return sum(s == fast for s in net.servers) / len(net.servers) if fast is not None else float("nan")


def _sweep(
    cfg: DictConfig, b: DictConfig, networks: list[tuple[str, int, Network, list[int], int, float]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every (network, λ, l_max, delay mode, policy): simulate; returns requests, placements, failures."""
    model = block_model(str(b.model))
    frames: list[pd.DataFrame] = []
    infos: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    stopped: BaseException | None = None
    try:
        for scenario, group, net, clients, run, fast_share in tqdm(networks, desc=f"{cfg.experiment.name} networks",
                                                                        disable=not cfg.get("progress", True)):
            for ri, rate in enumerate(b.arrival_rates_per_s):
                for li, l_max in enumerate(b.max_tokens):
                    base = Problem(model, net, int(b.input_tokens), int(l_max))
                    problem = Problem(
                        model, net, int(b.input_tokens), int(l_max), _concurrency(b, base, clients, float(rate))
                    )
                    for delays_on in b.allocation_delay_modes:
                        labels = {
                            "scenario": scenario,
                            "client_group": group,
                            "arrival_rate_per_s": float(rate),
                            "max_tokens": int(l_max),
                            "allocation_delays": bool(delays_on),
                            "num_servers": len(net.servers),
                            "a100_share": fast_share,
                            "design_concurrency": problem.design_concurrency,
                            "run": run,
                        }
                        for policy in _policies(cfg, b.policies, bool(delays_on), b):
                            # Common random numbers: every policy and group of a cell gets the same arrivals.
                            seed = (int(cfg.seed), run, ri, li)
                            try:
                                df, info = run_policy(
                                    problem, policy, clients, float(rate), int(b.num_requests), seed, labels
                                )
                            except (InfeasiblePlacementError, NoRouteError) as exc:
                                # A sweep point where a policy cannot serve (too few servers for |R|, or PETALS
                                # leaving blocks uncovered) is a result, not a crash: it goes to failures.
                                log.warning("%s %s: %s", policy.name, labels, exc)
                                failures.append({**labels, "policy": policy.name, "placement": policy.placement_name,
                                                 "routing": policy.routing_name, "error_type": type(exc).__name__,
                                                 "error": str(exc)})
                                continue
                            frames.append(df)
                            infos.append(info)
    except BaseException as exc:  # Ctrl-C or a failure: the finished cells are kept (status: incomplete)
        if not frames:
            raise
        stopped = exc
    requests = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    failure_columns = ["policy", "placement", "routing", *labels_order(), "error_type", "error"]
    tables = requests, pd.DataFrame(infos), pd.DataFrame(failures, columns=failure_columns)
    if stopped is not None:
        raise PartialResult(_result(*tables, b), stopped) from stopped
    return tables


def labels_order() -> list[str]:
    """Label columns of every request, placement and failure row, in table order."""
    return [*SCENARIO_KEYS, "design_concurrency", "run"]


def table3(summary: pd.DataFrame, petals: str, proposed: str, delays_s: tuple[float, float] = (0.0, 0.0)
           ) -> pd.DataFrame:
    """Table III layout: per cell our PETALS and proposed per-token times and reduction %, paper beside.

    ``delays_s``: the authors' per-request allocation delays of (PETALS, proposed) when they are on. They are pure
    latency at arrival (no cache held), so a policy's per-token time with them is exactly its time without them
    plus delay / l_max. Each reduction is split into ``algorithm_reduction_pct`` (the policies' own times, delays
    removed) and ``delay_only_reduction_pct`` (what the two delays alone give when both policies run at PETALS'
    per-token time without delays): so nobody reads the 250 s vs 60 s delays as an algorithmic gain.
    """
    rows = []
    keys = ["client_group", "arrival_rate_per_s", "max_tokens", "allocation_delays"]
    pivot = summary.pivot_table(index=keys, columns="policy", values="per_token_s_mean").reset_index()
    for _, r in pivot.iterrows():
        paper = PAPER_TABLE3.get(
            (int(r.client_group), float(r.arrival_rate_per_s), int(r.max_tokens)),
            (float("nan"), float("nan")),
        )
        ours_p, ours_q = float(r.get(petals, float("nan"))), float(r.get(proposed, float("nan")))
        on = bool(r.allocation_delays)
        share_p, share_q = ((delays_s[0], delays_s[1]) if on else (0.0, 0.0))
        share_p, share_q = share_p / float(r.max_tokens), share_q / float(r.max_tokens)  # delay / l_max
        base_p, base_q = ours_p - share_p, ours_q - share_q
        rows.append(
            {
                **{k: r[k] for k in keys},
                "petals_per_token_s": ours_p,
                "proposed_per_token_s": ours_q,
                "reduction_pct": 100 * (1 - ours_q / ours_p),
                "delay_petals_s": delays_s[0] if on else 0.0,
                "delay_proposed_s": delays_s[1] if on else 0.0,
                "algorithm_reduction_pct": 100 * (1 - base_q / base_p),
                "delay_only_reduction_pct": 100 * (1 - (base_p + share_q) / (base_p + share_p)),
                "paper_petals_per_token_s": paper[0],
                "paper_proposed_per_token_s": paper[1],
                "paper_reduction_pct": 100 * (1 - paper[1] / paper[0]),
            }
        )
    return pd.DataFrame(rows)


def _result(
    requests: pd.DataFrame,
    infos: pd.DataFrame,
    failures: pd.DataFrame,
    b: DictConfig,
    extra: dict[str, pd.DataFrame] | None = None,
) -> ExperimentResult:
    summary = summarize(requests, infos) if len(requests) else pd.DataFrame()
    tables = {
        "requests": requests,
        "summary": summary,
        "placements": infos,
        "failures": failures,
        **(extra or {}),
    }
    return ExperimentResult(tables=tables, documents={"bprr": OmegaConf.to_container(b)},  # type: ignore[dict-item]
                            failure=None if len(requests) else nothing_served(failures))


def nothing_served(failures: pd.DataFrame) -> str:
    """The reason a run served no request: every distinct error of its failure rows (or that it had no cells)."""
    if not len(failures):
        return "the grid has no cells (no policies, clients or runs)"
    errors = failures.groupby(["error_type", "error"], sort=False).size().reset_index(name="n")
    lines = [f"{r.n}× {r.error_type}: {r.error}" for r in errors.itertuples()]
    return f"every one of the {len(failures)} (cell, policy) pairs failed: " + " | ".join(lines)


def run_bprr_clustered(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Table III: client cluster × λ × l_max, PETALS vs CG-BP + WS-RR, Monte Carlo runs (Sun et al. §VI)."""
    b = _grid(cfg)
    check_policies(cfg, b.policies, singles=("topology",))
    topo = instantiate(cfg.topology)
    net = topo.build(np.random.default_rng(int(cfg.seed)))
    networks = []
    for run in range(int(b.monte_carlo_runs)):
        for group in b.client_clusters:
            clients = [c for c, g in enumerate(net.client_groups) if g == int(group)]
            networks.append((f"cluster{int(group)}", int(group), net, clients, run, _fast_share(topo, net)))
    requests, infos, failures = _sweep(cfg, b, networks)
    names = [str(p.name) for p in b.policies]
    kinds = [str(p.delay) for p in b.policies[:2]]
    delays = tuple(float(b.allocation_delay_petals_s if k == "petals" else b.allocation_delay_proposed_s)
                   for k in kinds)
    served = (table3(summarize(requests, infos), names[0], names[1], (delays[0], delays[1])) if len(requests)
              else pd.DataFrame())
    return _result(requests, infos, failures, b, {"table3": served})


def run_bprr_scattered(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Topology Zoo graphs: C random servers (fraction η A100), one random client, per Monte Carlo run."""
    known = options("topology")
    # Checked on the list as typed, before smoke=true shrinks it: an unknown name must not pass unnoticed.
    for name in (str(n) for n in cfg.bprr.topologies):
        if name not in known:
            raise ConfigError(f"topology={name!r} is not an option; choose one of {known} "
                              f"(bprr.topologies={list(cfg.bprr.topologies)})")
    b = _grid(cfg)
    networks = []
    check_policies(cfg, b.policies, {"topology": [str(n) for n in b.topologies]})
    for name in b.topologies:
        topo = instantiate(listed(cfg, "topology", str(name)), num_servers=int(b.num_servers),
                           a100_fraction=float(b.a100_fraction))
        for run in range(int(b.monte_carlo_runs)):
            net = topo.build(np.random.default_rng([int(cfg.seed), run, 7]))
            networks.append((str(name), 0, net, [0], run, _fast_share(topo, net)))
    requests, infos, failures = _sweep(cfg, b, networks)
    return _result(requests, infos, failures, b)


def run_placement(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Generic experiment: the selected ``topology``, ``placement``, ``routing`` options on one workload."""
    b = _grid(cfg)
    b.policies = [
        {
            "name": f"{option_name(cfg.placement._target_)}+{option_name(cfg.routing._target_)}",
            "placement": OmegaConf.to_container(cfg.placement),
            "routing": OmegaConf.to_container(cfg.routing),
            "delay": str(b.delay),
        }
    ]
    check_args(cfg, {}, singles=("topology", "placement", "routing"))
    topo = instantiate(cfg.topology)
    networks = []
    for run in range(int(b.monte_carlo_runs)):
        net = topo.build(np.random.default_rng([int(cfg.seed), run, 7]))
        clients = [c for c, g in enumerate(net.client_groups) if g == int(b.client_group)] or [0]
        networks.append(("placement", int(b.client_group), net, clients, run, _fast_share(topo, net)))
    requests, infos, failures = _sweep(cfg, b, networks)
    return _result(requests, infos, failures, b)
