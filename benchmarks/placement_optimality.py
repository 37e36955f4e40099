"""Exact BPRR on the paper's testbeds: time to proven optimality of both MILP formulations, CG-BPRR's true gap.

Run: ``PYTHONPATH=. python benchmarks/placement_optimality.py --out results/reference/bprr_optimality_testbeds``
(``--time-limit-s 120``, ``--requests 2,10,20,40,80``). Prints one line per solve and writes ``cases.csv`` (one
row per solve), ``traces.csv`` (HiGHS's incumbent and dual bound over time), ``time_to_gap.png`` and
``environment.json`` (machine, versions, load) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.placement.optimality import cg_bprr_objective_s
from placement.base import InfeasiblePlacementError, Network, Problem
from placement.catalog import BLOOM_176B
from placement.clustered import ClusteredTopology
from placement.milp import MilpSolution, request_clients, solve_bprr
from placement.milp_tight import solve_tight
from placement.solver import highs_module
from placement.topology_zoo import TopologyZooTopology

Solve = Callable[[Problem, list[int], float, list[tuple[float, float, float]]], MilpSolution]
FORMULATIONS: dict[str, Solve] = {
    "milp": lambda p, c, t, tr: solve_bprr(p, c, t, trace=tr),
    "milp_tight": lambda p, c, t, tr: solve_tight(p, c, t, trace=tr),
    "milp_tight_cold": lambda p, c, t, tr: solve_tight(p, c, t, warm_start=False, trace=tr),
}


def testbeds() -> dict[str, Network]:
    """The clustered testbed (2 A100 + 7 MIG), the paper's large one (5 A100 + 21 MIG, clustered RTTs) and the
    26-server GTS-CE instance of ``placement_speed.py``."""
    rng = np.random.default_rng(0)
    return {
        "clustered_9": ClusteredTopology(a100_count=2, mig_count=7).build(rng),
        "clustered_26": ClusteredTopology(a100_count=5, mig_count=21).build(rng),
        "gtsce_26": TopologyZooTopology(file="GtsCe.graph", num_servers=26, a100_fraction=0.2,
                                        num_clients=2).build(np.random.default_rng(0)),
    }


def solve_case(name: str, net: Network, requests: int, formulation: str, time_limit_s: float,
               traces: list[dict[str, object]]) -> dict[str, object]:
    """One solve: time, objective, bound, gap; CG-BPRR's objective and its gap to the proven optimum."""
    problem = Problem(BLOOM_176B, net, 20, 128, requests)
    clients = request_clients(problem)
    row: dict[str, object] = {"testbed": name, "servers": len(net.servers), "requests": requests,
                              "formulation": formulation, "time_limit_s": time_limit_s}
    try:
        cg = cg_bprr_objective_s(problem, np.random.default_rng(0))
    except InfeasiblePlacementError:
        cg = float("nan")
    trace: list[tuple[float, float, float]] = []
    t0 = time.perf_counter()
    try:
        sol = FORMULATIONS[formulation](problem, clients, time_limit_s, trace)
    except (InfeasiblePlacementError, RuntimeError) as exc:
        row.update(time_s=time.perf_counter() - t0, status=type(exc).__name__, cg_bprr_objective_s=cg)
        print(f"{name} |R|={requests} {formulation}: {type(exc).__name__}: {exc}", flush=True)
        return row
    dt = time.perf_counter() - t0
    for t, primal, dual in trace:
        traces.append({"testbed": name, "requests": requests, "formulation": formulation, "time_s": t,
                       "objective_s": primal, "bound_s": dual,
                       "gap": (primal - dual) / primal if np.isfinite(dual) and primal else np.nan})
    row.update(time_s=dt, status="optimal" if sol.optimal else "stopped", objective_s=sol.objective_s,
               bound_s=sol.bound_s, gap=sol.gap, optimal=sol.optimal, cg_bprr_objective_s=cg,
               cg_bprr_gap_pct=100 * (cg - sol.objective_s) / sol.objective_s,
               cg_bprr_gap_to_bound_pct=100 * (cg - sol.bound_s) / sol.bound_s,
               blocks=" ".join(str(m) for m in sol.placement.count))
    print(f"{name} ({len(net.servers)} servers) |R|={requests} {formulation}: {dt:.1f} s, objective "
          f"{sol.objective_s:.4f} s, bound {sol.bound_s:.4f} s, gap {100 * sol.gap:.3g}% "
          f"({'optimal' if sol.optimal else sol.status}); CG-BPRR {cg:.4f} s, "
          f"{row['cg_bprr_gap_pct']:.2f}% above the incumbent"
          + ("" if sol.optimal else f", {row['cg_bprr_gap_to_bound_pct']:.2f}% above the bound"), flush=True)
    return row


def plot(traces: pd.DataFrame, out: Path) -> None:
    """Relative gap (incumbent − bound) / incumbent over time, one panel per (testbed, |R|), one line per
    formulation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Only the cases several formulations solved or that stayed open: the others close at their first point.
    last = traces.sort_values("time_s").groupby(["testbed", "requests", "formulation"])["gap"].last()
    open_cases = {(t, r) for (t, r, _), gap in last.items() if gap > 1e-4}
    several = traces.groupby(["testbed", "requests"])["formulation"].nunique()
    cases = sorted({(str(t), int(r)) for (t, r), n in several.items() if n > 1 or (t, r) in open_cases})
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.4), squeeze=False)
    for ax, (testbed, requests) in zip(axes[0], cases, strict=True):
        sub = traces[(traces["testbed"] == testbed) & (traces["requests"] == requests)]
        for formulation, g in sub.groupby("formulation"):
            g = g.dropna(subset=["gap"]).sort_values("time_s")
            ax.step(g["time_s"], np.maximum(g["gap"], 1e-6), where="post", label=str(formulation), marker=".")
        ax.set_yscale("log")
        ax.axhline(1e-4, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{testbed}, |R| = {requests}")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("relative gap (1e-6 = closed)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "time_to_gap.png", dpi=120)


def highs_label() -> str:
    """Which HiGHS bindings ran: ``highspy``, scipy's vendored copy, or scipy.optimize.milp."""
    module = highs_module()
    if module is None:
        return "scipy.optimize.milp"
    version = ".".join(str(getattr(module, f"HIGHS_VERSION_{p}", "?")) for p in ("MAJOR", "MINOR", "PATCH"))
    return f"{module.__name__.split('.')[0] if module.__name__.startswith('highspy') else 'scipy-vendored'} " \
        f"HiGHS {version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/runs/bprr_optimality_testbeds"))
    parser.add_argument("--time-limit-s", type=float, default=120.0)
    parser.add_argument("--requests", default="2,10,20,40,80", help="|R| values pushed on each clustered testbed")
    parser.add_argument("--skip-old", action="store_true", help="skip the old formulation (it stops at the limit)")
    parser.add_argument("--plot-only", action="store_true", help="redraw time_to_gap.png from --out/traces.csv")
    args = parser.parse_args()
    if args.plot_only:
        plot(pd.read_csv(args.out / "traces.csv"), args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    env = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "cpu_count": os.cpu_count(),
           "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
           "highs": highs_label(), "load_avg_start": os.getloadavg()}
    import scipy

    env["scipy"] = scipy.__version__
    nets = testbeds()
    rows: list[dict[str, object]] = []
    traces: list[dict[str, object]] = []
    # The two targets (and the old benchmark's GTS-CE case) with every formulation.
    targets = [("clustered_9", 10), ("clustered_26", 2), ("gtsce_26", 2)]
    for name, requests in targets:
        for formulation in FORMULATIONS:
            if formulation == "milp" and args.skip_old:
                continue
            rows.append(solve_case(name, nets[name], requests, formulation, args.time_limit_s, traces))
    # Push |R| up with the tight formulation until it no longer proves optimality within the limit.
    for name in ("clustered_9", "clustered_26"):
        for requests in (int(r) for r in args.requests.split(",")):
            if (name, requests) in targets:
                continue
            row = solve_case(name, nets[name], requests, "milp_tight", args.time_limit_s, traces)
            rows.append(row)
            if row.get("status") != "optimal":
                break
    env["load_avg_end"] = os.getloadavg()
    pd.DataFrame(rows).to_csv(args.out / "cases.csv", index=False)
    tr = pd.DataFrame(traces)
    tr.to_csv(args.out / "traces.csv", index=False)
    (args.out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    if len(tr):
        plot(tr, args.out)
    print(f"wrote {args.out}/cases.csv, traces.csv, time_to_gap.png, environment.json")


if __name__ == "__main__":
    main()
