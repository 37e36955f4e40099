"""One simulated scenario: place, route and simulate a Poisson workload; tidy request rows and a summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from placement.base import Placement, PlacementPolicy, Problem, Router
from placement.cg_bp import CgBpPlacement
from placement.dag import dag_shortest_route, link_costs
from placement.perf import route_times
from placement.simulator import poisson_arrivals, simulate

# Sweep axes (the paper's Figs 7–10: C, η, λ, l_max) are columns too, so sweeps concatenate into one table.
SCENARIO_KEYS = ("scenario", "client_group", "arrival_rate_per_s", "max_tokens", "allocation_delays",
                 "num_servers", "a100_share")
METRICS = ("per_token_s", "ttft_s", "wait_s")


@dataclass(frozen=True)
class Policy:
    """A named (placement, routing) pair; ``placement_name``/``routing_name`` are the option names."""

    name: str
    placement: PlacementPolicy
    router: Router
    placement_name: str = ""
    routing_name: str = ""


def single_request_s(problem: Problem, clients: list[int]) -> float:
    """T1: one request alone, on the CG-BP placement for |R| = 1 and its best route (Sun et al. §V)."""
    one = replace(problem, design_concurrency=1)
    placement = CgBpPlacement().place(one, np.random.default_rng(0))
    return max(
        route_times(one, c, dag_shortest_route(one, placement, c, *link_costs(one, c))[0]).service_s
        for c in clients
    )


def auto_concurrency(problem: Problem, clients: list[int], rate_per_s: float, r_max: int) -> int:
    """The authors' design concurrency |R| = min(round(λT1 + √(λT1)), R_max) (ANCHORS §4)."""
    load = rate_per_s * len(clients) * single_request_s(problem, clients)
    return int(max(1, min(round(load + math.sqrt(load)), r_max)))


def block_counts_by_type(problem: Problem, placement: Placement) -> dict[str, float]:
    """Mean blocks per server, per server type (``blocks_<type>`` columns)."""
    by: dict[str, list[int]] = {}
    for s, m in zip(problem.network.servers, placement.count, strict=True):
        by.setdefault(s.name, []).append(m)
    return {f"blocks_{k}": float(np.mean(v)) for k, v in sorted(by.items())}


def run_policy(
    problem: Problem,
    policy: Policy,
    clients: list[int],
    rate_per_s: float,
    num_requests: int,
    seed: tuple[int, ...],
    labels: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Place with ``seed``-derived randomness; simulate Poisson arrivals (the same for every policy)."""
    placement = policy.placement.place(problem, np.random.default_rng([*seed, 1]))
    arrivals = poisson_arrivals(np.random.default_rng([*seed, 2]), rate_per_s, num_requests, clients)
    rows, _ = simulate(problem, placement, policy.router, arrivals)
    df = pd.DataFrame(rows)
    for key, value in labels.items():
        df[key] = value
    names = {"policy": policy.name, "placement": policy.placement_name or placement.policy,
             "routing": policy.routing_name or type(policy.router).__name__}
    for key, value in names.items():
        df[key] = value
    info = {
        **names,
        **labels,
        "design_concurrency": problem.design_concurrency,
        **block_counts_by_type(problem, placement),
    }
    solution = getattr(policy.placement, "last", None)  # the MILP reports objective, bound and gap
    if solution is not None:
        info.update(milp_objective_s=solution.objective_s, milp_bound_s=solution.bound_s,
                    milp_gap=solution.gap)
    return df, info


def summarize(requests: pd.DataFrame, placements: pd.DataFrame) -> pd.DataFrame:
    """Per (policy = placement + routing, scenario keys): mean per-token time, TTFT, wait, over requests and
    Monte Carlo runs."""
    keys = [k for k in ("policy", "placement", "routing", *SCENARIO_KEYS) if k in requests.columns]
    # The authors' allocation delay is pure latency at arrival: its share of per_token_s is delay / l_max.
    l_max = requests.get("max_tokens", np.nan)  # a label column; absent in bare runs
    delay_share = (requests["allocation_delay_s"] / l_max).where(requests["allocation_delay_s"] > 0, 0.0)
    requests = requests.assign(per_token_delay_s=delay_share,
                               per_token_no_delay_s=requests["per_token_s"] - delay_share)
    agg = (
        requests.groupby(keys, dropna=False)
        .agg(
            per_token_s_mean=("per_token_s", "mean"),
            per_token_no_delay_s_mean=("per_token_no_delay_s", "mean"),
            per_token_delay_s_mean=("per_token_delay_s", "mean"),
            ttft_s_mean=("ttft_s", "mean"),
            wait_s_mean=("wait_s", "mean"),
            per_token_s_p95=("per_token_s", lambda s: float(np.quantile(s, 0.95))),
            requests=("request_id", "size"),
            runs=("run", "nunique"),
        )
        .reset_index()
    )
    blocks = [c for c in placements.columns
              if c.startswith(("blocks_", "milp_")) or c == "design_concurrency"]  # milp_: objective/bound/gap
    per = placements.groupby(keys, dropna=False)[blocks].mean().reset_index()
    return agg.merge(per, on=keys, how="left")
