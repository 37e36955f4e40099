"""Both exact formulations equal exhaustive search on seeded tiny instances (binding memory, block caps, identical
servers, servers below the runtime reserve, infeasible ones); CG-BPRR is never below them; edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.placement.optimality import cg_bprr_objective_s
from placement import solver
from placement.base import BlockModel, InfeasiblePlacementError, Network, Problem, ServerType
from placement.instances import TOY_MODEL_PARAMS
from placement.milp import MilpPlacement, request_clients, solve_bprr
from placement.milp_tight import MilpTightPlacement, build_tight, cg_bprr_start, solve_tight
from placement.perf import check_route, hop_token_s
from tests.placement.exhaustive import exhaustive_bprr, memory_used_gb


def tiny_instance(seed: int) -> Problem:
    """2–3 servers, 3–5 blocks of 1 GB, 0.1 GB per session-block, |R| = 1–3 over 2 clients. Drawn so that memory
    binds, some servers have a block cap, some are identical twins, some sit below the 0.5 GB runtime reserve,
    and some instances are infeasible."""
    rng = np.random.default_rng([17, seed])
    L = int(rng.integers(3, 6))
    model = BlockModel("toy", num_blocks=L, **{**TOY_MODEL_PARAMS, "reserve_gib": 0.5 * 1e9 / 2**30})  # type: ignore[arg-type]
    servers: list[ServerType] = []
    rtt_cols: list[np.ndarray] = []
    for j in range(int(rng.integers(2, 4))):
        if servers and rng.random() < 0.3:  # an identical twin of the previous server (same type, same RTTs)
            servers.append(servers[-1])
            rtt_cols.append(rtt_cols[-1])
            continue
        mem = 0.3 if rng.random() < 0.1 else float(rng.uniform(1.5, L + 2.5))  # 0.3 GB: below the reserve
        cap = int(rng.integers(1, L)) if rng.random() < 0.3 else None
        servers.append(ServerType(f"s{j}", mem_gb=mem, tau_s=float(rng.uniform(0.002, 0.02)), tau_in_slope_s=0.0,
                                  tau_in_base_s=0.01, max_blocks=cap))
        rtt_cols.append(rng.uniform(0.0, 0.1, size=2))
    net = Network(tuple(servers), ("c0", "c1"), np.column_stack(rtt_cols), np.zeros((len(servers), len(servers))),
                  (0, 1))
    return Problem(model, net, input_tokens=1, max_tokens=1, design_concurrency=int(rng.integers(1, 4)))


def _check_solution(problem: Problem, clients: list[int], sol: object, expected: float) -> None:
    placement, routes = sol.placement, sol.routes  # type: ignore[attr-defined]
    assert sol.objective_s == pytest.approx(expected, rel=1e-6, abs=1e-9)  # type: ignore[attr-defined]
    hops = []
    total = 0.0
    for c, route in zip(clients, routes, strict=True):
        check_route(problem, placement, route)
        hops += [(h.server, h.blocks) for h in route.hops]
        total += sum(hop_token_s(problem, c, h.server, h.blocks) for h in route.hops)
    assert total == pytest.approx(expected, rel=1e-6, abs=1e-9)
    used = memory_used_gb(problem, placement.count, hops)
    for j, m in enumerate(placement.count):
        if m:
            assert used[j] <= problem.usable_mem_gb(j) + 1e-6


SEEDS = range(24)


@pytest.fixture(scope="module")
def exhaustive() -> dict[int, float]:
    """The exhaustive optimum of every seeded instance (computed once for the module)."""
    out = {}
    for seed in SEEDS:
        problem = tiny_instance(seed)
        out[seed] = exhaustive_bprr(problem, request_clients(problem)).objective_s
    return out


def test_the_seeded_instances_cover_the_cases(exhaustive: dict[int, float]) -> None:
    problems = [tiny_instance(s) for s in SEEDS]
    feasible = sum(np.isfinite(v) for v in exhaustive.values())
    assert 8 <= feasible <= len(SEEDS) - 3
    assert any(any(s.max_blocks for s in p.network.servers) for p in problems)
    assert any(any(p.usable_mem_gb(j) < 0 for j in range(len(p.network.servers))) for p in problems)
    assert any(len(set(map(id, p.network.servers))) < len(p.network.servers) for p in problems)
    assert any(p.design_concurrency == 3 for p in problems)


@pytest.mark.parametrize("seed", SEEDS)
def test_both_formulations_equal_exhaustive_search_and_cg_bprr_is_never_below(seed: int,
                                                                               exhaustive: dict[int, float]) -> None:
    problem = tiny_instance(seed)
    clients = request_clients(problem)
    expected = exhaustive[seed]
    if not np.isfinite(expected):
        for solve in (solve_bprr, solve_tight):
            with pytest.raises(InfeasiblePlacementError) as info:
                solve(problem, clients, time_limit_s=20)
            assert "nan" not in str(info.value)
        with pytest.raises(InfeasiblePlacementError):
            cg_bprr_objective_s(problem, np.random.default_rng(0))
        return
    old = solve_bprr(problem, clients, time_limit_s=20)
    assert old.optimal
    _check_solution(problem, clients, old, expected)
    for warm in (True, False):
        tight = solve_tight(problem, clients, time_limit_s=20, warm_start=warm)
        assert tight.optimal
        assert tight.gap <= 1e-4
        _check_solution(problem, clients, tight, expected)
    try:
        cg = cg_bprr_objective_s(problem, np.random.default_rng(0))
    except InfeasiblePlacementError:
        return  # CG-BPRR's reservation may find nothing where an optimum exists (a finding, not an error)
    assert cg >= expected - 1e-9


def test_cuts_and_symmetry_rows_do_not_cut_off_the_optimum(exhaustive: dict[int, float]) -> None:
    for seed in SEEDS[:8]:
        problem = tiny_instance(seed)
        if not np.isfinite(exhaustive[seed]):
            continue
        clients = request_clients(problem)
        plain = solve_tight(problem, clients, time_limit_s=20, symmetry=False, cuts=False, warm_start=False)
        assert plain.objective_s == pytest.approx(exhaustive[seed], rel=1e-6, abs=1e-9)


def test_cg_bprr_start_is_a_feasible_point_of_the_model() -> None:
    from tests.placement.conftest import clustered_problem

    problem = clustered_problem(concurrency=10)
    clients = request_clients(problem)
    model = build_tight(problem, clients)
    x = cg_bprr_start(model, problem, clients)
    assert x is not None
    ax = model.milp.matrix @ x
    assert np.all(ax >= model.milp.lo - 1e-9)
    assert np.all(ax <= model.milp.hi + 1e-9)
    assert float(model.milp.cost @ x) == pytest.approx(cg_bprr_objective_s(problem, np.random.default_rng(0)))


def test_clustered_testbed_is_proven_optimal_with_a_trace() -> None:
    from tests.placement.conftest import clustered_problem

    problem = clustered_problem(concurrency=2)
    trace: list[tuple[float, float, float]] = []
    sol = solve_tight(problem, request_clients(problem), time_limit_s=60, trace=trace)
    assert sol.optimal
    assert sol.gap <= 1e-4
    assert sol.objective_s <= cg_bprr_objective_s(problem, np.random.default_rng(0)) + 1e-9
    assert trace
    assert trace[-1][1] == pytest.approx(sol.objective_s, rel=1e-6)
    assert all(b <= p + 1e-9 for _, p, b in trace)


def test_scipy_fallback_gives_the_same_optimum(monkeypatch: pytest.MonkeyPatch, exhaustive: dict[int, float]) -> None:
    seed = next(s for s in SEEDS if np.isfinite(exhaustive[s]))
    problem = tiny_instance(seed)
    monkeypatch.setattr(solver, "highs_module", lambda: None)
    sol = solve_tight(problem, request_clients(problem), time_limit_s=20)
    assert sol.objective_s == pytest.approx(exhaustive[seed], rel=1e-6, abs=1e-9)


def _problem(mem_gb: list[float], max_blocks: list[int | None], num_blocks: int = 3, concurrency: int = 1) -> Problem:
    model = BlockModel("toy", num_blocks=num_blocks, **{**TOY_MODEL_PARAMS, "reserve_gib": 2.0})  # type: ignore[arg-type]
    servers = tuple(ServerType(f"s{j}", mem_gb=m, tau_s=0.01, tau_in_slope_s=0.0, tau_in_base_s=0.01, max_blocks=c)
                    for j, (m, c) in enumerate(zip(mem_gb, max_blocks, strict=True)))
    net = Network(servers, ("c0",), np.zeros((1, len(servers))), np.zeros((len(servers), len(servers))), (0,))
    return Problem(model, net, input_tokens=1, max_tokens=1, design_concurrency=concurrency)


@pytest.mark.parametrize("policy", [MilpPlacement(time_limit_s=10), MilpTightPlacement(time_limit_s=10)])
def test_a_server_below_the_runtime_reserve_hosts_nothing(policy: object) -> None:
    # 2 GiB reserve = 2.147 GB: the 1.5 GB server cannot run at all, the other two carry the model.
    problem = _problem([1.5, 4.5, 4.5], [None, None, None], num_blocks=3)
    placement = policy.place(problem, np.random.default_rng(0))  # type: ignore[attr-defined]
    assert placement.count[0] == 0
    assert placement.covered(3)


@pytest.mark.parametrize("solve", [solve_bprr, solve_tight])
def test_infeasible_when_no_server_holds_a_block_says_which_memory_is_needed(solve: object) -> None:
    problem = _problem([2.5, 2.5], [None, None])  # 0.35 GB usable each, a block needs 1 GB
    with pytest.raises(InfeasiblePlacementError) as info:
        solve(problem, request_clients(problem), time_limit_s=10)  # type: ignore[operator]
    message = str(info.value)
    assert "no server can hold a single block" in message
    assert "add servers" not in message
    assert "nan" not in message
    assert info.value.shortfall_blocks == 3


def test_cg_bp_infeasible_when_no_server_holds_a_block_says_which_memory_is_needed() -> None:
    from placement.cg_bp import CgBpPlacement

    with pytest.raises(InfeasiblePlacementError, match="no server can hold a single block"):
        CgBpPlacement().place(_problem([2.5, 2.5], [None, None]), np.random.default_rng(0))


def test_infeasible_by_block_caps_names_the_blocks_short() -> None:
    problem = _problem([20.0, 20.0], [1, 1], num_blocks=3)  # caps allow 2 of 3 blocks
    with pytest.raises(InfeasiblePlacementError, match="1 block") as info:
        solve_tight(problem, request_clients(problem), time_limit_s=10)
    assert "add servers" in str(info.value)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="time_limit_s"):
        MilpTightPlacement(time_limit_s=0)
    with pytest.raises(ValueError, match="mip_rel_gap"):
        MilpTightPlacement(mip_rel_gap=1.5)
