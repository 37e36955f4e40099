"""The BPRR MILP equals exhaustive enumeration on tiny instances; CG-BPRR never beats it."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from experiments.placement.optimality import cg_bprr_objective_s
from placement.base import InfeasiblePlacementError, Problem
from placement.instances import random_problem
from placement.milp import MilpPlacement, request_clients, solve_bprr
from placement.perf import check_route
from tests.placement.conftest import toy_problem


def _chains(problem: Problem, start: tuple[int, ...], count: tuple[int, ...]) -> list[list[tuple[int, int]]]:
    """Every chain of (server, blocks) from block 0 to L under Lemma 1."""
    out: list[list[tuple[int, int]]] = []

    def walk(pos: int, path: list[tuple[int, int]]) -> None:
        if pos == problem.num_blocks:
            out.append(path)
            return
        for j, (a, m) in enumerate(zip(start, count, strict=True)):
            if m and a <= pos < a + m:
                walk(a + m, [*path, (j, a + m - pos)])

    walk(0, [])
    return out


def brute_force(problem: Problem, clients: list[int]) -> float:
    """Minimum Σ_r per-token time over every placement and every combination of chains, memory respected."""
    L, S = problem.num_blocks, len(problem.network.servers)
    options = []
    for s in problem.network.servers:
        top = L if s.max_blocks is None else min(L, s.max_blocks)
        options.append([(0, 0)] + [(a, m) for m in range(1, top + 1) for a in range(L - m + 1)])
    best = np.inf
    for combo in itertools.product(*options):
        start, count = tuple(c[0] for c in combo), tuple(c[1] for c in combo)
        if any(problem.model.block_gb * count[j] > problem.usable_mem_gb(j) + 1e-9 for j in range(S)):
            continue
        chains = _chains(problem, start, count)
        for pick in itertools.product(chains, repeat=len(clients)):
            load = np.zeros(S)
            cost = 0.0
            for c, chain in zip(clients, pick, strict=True):
                for j, k in chain:
                    load[j] += k
                    cost += problem.network.client_rtt_s[c, j] + problem.overheads.per_token_s + \
                        problem.network.servers[j].tau_s * k
            mem = problem.model.block_gb * np.array(count) + problem.cache_gb * load
            if all(mem[j] <= problem.usable_mem_gb(j) + 1e-9 for j in range(S)):
                best = min(best, cost)
    return float(best)


@pytest.mark.parametrize("seed", range(6))
def test_milp_optimum_equals_exhaustive_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, num_servers=int(rng.integers(2, 4)), num_blocks=int(rng.integers(3, 6)),
                             num_clients=2, num_requests=int(rng.integers(1, 3)))
    clients = request_clients(problem)
    expected = brute_force(problem, clients)
    if not np.isfinite(expected):
        with pytest.raises(InfeasiblePlacementError):
            solve_bprr(problem, clients, time_limit_s=20)
        return
    sol = solve_bprr(problem, clients, time_limit_s=20)
    assert sol.optimal
    assert sol.objective_s == pytest.approx(expected, rel=1e-6, abs=1e-9)
    for route in sol.routes:
        check_route(problem, sol.placement, route)


def test_memory_coupling_forces_a_slower_route() -> None:
    # Server 0 is fast but only has room for 2 blocks + one session; the second request must detour.
    problem = toy_problem([2.2, 2.2, 4.5], [0.001, 0.001, 0.05], [[0.0, 0.0, 0.0]], num_blocks=4,
                          concurrency=2)
    sol = solve_bprr(problem, [0, 0], time_limit_s=20)
    assert sol.objective_s == pytest.approx(brute_force(problem, [0, 0]))


@pytest.mark.parametrize("seed", range(8))
def test_cg_bprr_objective_is_never_below_the_milp_optimum(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    problem = random_problem(rng, num_servers=int(rng.integers(2, 5)), num_blocks=int(rng.integers(4, 8)),
                             num_clients=2, num_requests=int(rng.integers(1, 3)))
    try:
        cg = cg_bprr_objective_s(problem, np.random.default_rng(0))
    except InfeasiblePlacementError:
        return
    sol = solve_bprr(problem, request_clients(problem), time_limit_s=20)
    assert cg >= sol.objective_s - 1e-9


def test_infeasible_milp_raises_named_error() -> None:
    problem = toy_problem([1.5, 1.5], [0.01, 0.01], [[0.0, 0.0]], num_blocks=4, concurrency=1)
    with pytest.raises(InfeasiblePlacementError):
        MilpPlacement(time_limit_s=10).place(problem, np.random.default_rng(0))


def test_bad_time_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="time_limit_s"):
        MilpPlacement(time_limit_s=0)


def test_milp_placement_reports_objective_bound_and_gap_in_the_run_tables() -> None:
    from experiments.placement.scenario import Policy, run_policy
    from placement.shortest_path import ShortestPathRouter

    problem = random_problem(np.random.default_rng(0), 3, 4, 2, 2)
    policy = Policy("milp", MilpPlacement(time_limit_s=10), ShortestPathRouter())
    df, info = run_policy(problem, policy, [0, 1], 0.5, 5, (0,), {"scenario": "tiny"})
    df["run"] = 0
    assert info["milp_gap"] == pytest.approx(0.0, abs=1e-6)
    assert info["milp_bound_s"] == pytest.approx(info["milp_objective_s"], rel=1e-6)
    assert info["milp_objective_s"] == pytest.approx(brute_force(problem, request_clients(problem)))
    from experiments.placement.scenario import summarize

    summary = summarize(df, pd.DataFrame([info]))
    assert summary["milp_gap"].iloc[0] == pytest.approx(0.0, abs=1e-6)
