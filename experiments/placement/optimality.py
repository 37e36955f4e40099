"""Experiment ``bprr_optimality``: CG-BPRR's objective against the exact MILP on small random instances."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from harness.config import check_args
from harness.experiment import ExperimentResult, PartialResult
from placement.base import InfeasiblePlacementError, Problem
from placement.catalog import BLOOM_176B
from placement.cg_bp import CgBpPlacement
from placement.clustered import ClusteredTopology
from placement.dag import dag_shortest_route, link_costs
from placement.instances import random_problem
from placement.milp import request_clients, solve_bprr
from placement.milp_tight import solve_tight


def cg_bprr_objective_s(problem: Problem, rng: np.random.Generator) -> float:
    """Σ_r per-token time of CG-BPRR (steps 1–3) for the |R| design requests (round-robin clients)."""
    placement = CgBpPlacement().place(problem, rng)
    return sum(dag_shortest_route(problem, placement, c, *link_costs(problem, c))[1]
               for c in request_clients(problem))


def run_bprr_optimality(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Per random instance: MILP objective, bound, gap, time; CG-BPRR objective and excess over it."""
    check_args(cfg, {})  # random instances: no model, topology or policy option is read, so none may be overridden
    o = cfg.optimality
    n = int(o.smoke_instances if cfg.get("smoke", False) else o.instances)
    rows: list[dict[str, object]] = []
    stopped: BaseException | None = None
    try:
        for i in range(n):
            rng = np.random.default_rng([int(cfg.seed), i])
            problem = random_problem(rng, int(rng.integers(o.min_servers, o.max_servers + 1)),
                                     int(rng.integers(o.min_blocks, o.max_blocks + 1)), int(o.num_clients),
                                     int(rng.integers(1, o.max_requests + 1)))
            row: dict[str, object] = {"instance": i, "servers": len(problem.network.servers),
                                      "blocks": problem.num_blocks, "requests": problem.design_concurrency}
            t0 = time.perf_counter()
            try:
                sol = solve_bprr(problem, request_clients(problem), float(o.time_limit_s))
            except InfeasiblePlacementError:
                rows.append({**row, "status": "milp_infeasible"})
                continue
            row.update(milp_objective_s=sol.objective_s, milp_bound_s=sol.bound_s, milp_gap=sol.gap,
                       milp_optimal=sol.optimal, milp_time_s=time.perf_counter() - t0)
            try:
                cg = cg_bprr_objective_s(problem, rng)
            except InfeasiblePlacementError:
                rows.append({**row, "status": "cg_bprr_infeasible"})
                continue
            rows.append({**row, "status": "ok", "cg_bprr_objective_s": cg,
                         "gap_pct": 100 * (cg - sol.objective_s) / sol.objective_s})
    except BaseException as exc:  # Ctrl-C or a failure: the solved instances are kept (status: incomplete)
        if not rows:
            raise
        stopped = exc
    df = pd.DataFrame(rows)
    ok = df[df["status"] == "ok"] if "status" in df else df
    summary = pd.DataFrame([{
        "instances": n, "solved": len(ok), "gap_pct_mean": ok["gap_pct"].mean() if len(ok) else np.nan,
        "gap_pct_median": ok["gap_pct"].median() if len(ok) else np.nan,
        "gap_pct_p90": float(ok["gap_pct"].quantile(0.9)) if len(ok) else np.nan,
        "gap_pct_max": ok["gap_pct"].max() if len(ok) else np.nan,
        "milp_infeasible": int((df["status"] == "milp_infeasible").sum()),
        "cg_bprr_infeasible": int((df["status"] == "cg_bprr_infeasible").sum()),
        "cg_bprr_optimal_share": float((ok["gap_pct"] < 1e-6).mean()) if len(ok) else np.nan,
        "milp_time_s_mean": ok["milp_time_s"].mean() if len(ok) else np.nan}])
    if stopped is not None:
        raise PartialResult(ExperimentResult(tables={"instances": df, "summary": summary}), stopped) from stopped
    testbeds = testbed_rows(cfg)
    failure = None if len(ok) else (f"none of the {n} instances was solved by both the MILP and CG-BPRR "
                                    f"(statuses: {df['status'].value_counts().to_dict()})")
    return ExperimentResult(tables={"instances": df, "summary": summary, "testbeds": testbeds}, failure=failure)


def testbed_rows(cfg: DictConfig) -> pd.DataFrame:
    """The paper's clustered testbeds (BLOOM-176B, l^I = 20, l_max = 128) solved exactly with ``milp_tight``: one
    row per (testbed, |R|) with the optimum, HiGHS's bound and gap, the time, and CG-BPRR's gap to the optimum."""
    o = cfg.optimality
    entries = o.get("smoke_testbeds" if cfg.get("smoke", False) else "testbeds") or []
    rows = []
    for e in entries:
        net = ClusteredTopology(a100_count=int(e.a100), mig_count=int(e.mig)).build(np.random.default_rng(0))
        problem = Problem(BLOOM_176B, net, 20, 128, int(e.requests))
        row: dict[str, object] = {"a100": int(e.a100), "mig": int(e.mig), "servers": len(net.servers),
                                  "requests": int(e.requests)}
        t0 = time.perf_counter()
        try:
            sol = solve_tight(problem, request_clients(problem), float(o.testbed_time_limit_s))
        except InfeasiblePlacementError as exc:
            rows.append({**row, "status": "milp_infeasible", "error": str(exc)})
            continue
        row.update(status="optimal" if sol.optimal else "stopped", milp_time_s=time.perf_counter() - t0,
                   milp_objective_s=sol.objective_s, milp_bound_s=sol.bound_s, milp_gap=sol.gap,
                   milp_optimal=sol.optimal)
        try:
            cg = cg_bprr_objective_s(problem, np.random.default_rng(0))
        except InfeasiblePlacementError:
            rows.append({**row, "status": "cg_bprr_infeasible"})
            continue
        rows.append({**row, "cg_bprr_objective_s": cg, "gap_pct": 100 * (cg - sol.objective_s) / sol.objective_s})
    return pd.DataFrame(rows)
