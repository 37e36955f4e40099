"""Placement speed benchmarks (printed, not asserted): CG-BPRR at scale, simulator speed, MILP time and gap.

Run: ``PYTHONPATH=. python benchmarks/placement_speed.py [--milp-time-limit-s 60]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from experiments.placement.scenario import auto_concurrency
from placement.base import Network, Problem
from placement.catalog import A100_80GB, BLOOM_176B, MIG_1G_10GB
from placement.cg_bp import CgBpPlacement
from placement.clustered import ClusteredTopology
from placement.dag import dag_shortest_route, link_costs
from placement.milp import request_clients, solve_bprr
from placement.milp_tight import solve_tight
from placement.simulator import poisson_arrivals, simulate
from placement.topology_zoo import TopologyZooTopology
from placement.ws_rr import WsRrRouter


def cg_bprr_at_scale(num_servers: int = 1000, num_clients: int = 100, concurrency: int = 10) -> None:
    """CG-BPRR steps 1–3 on ``num_servers`` servers (20% A100), 70 blocks, ``num_clients`` clients."""
    rng = np.random.default_rng(0)
    servers = tuple(A100_80GB if rng.random() < 0.2 else MIG_1G_10GB for _ in range(num_servers))
    client_rtt = rng.uniform(0.005, 0.1, size=(num_clients, num_servers))
    net = Network(servers, tuple(f"c{i}" for i in range(num_clients)), client_rtt,
                  np.zeros((num_servers, num_servers)))
    problem = Problem(BLOOM_176B, net, 20, 128, concurrency)
    t0 = time.perf_counter()
    placement = CgBpPlacement().place(problem, rng)
    t1 = time.perf_counter()
    for c in range(num_clients):
        dag_shortest_route(problem, placement, c, *link_costs(problem, c))
    t2 = time.perf_counter()
    print(f"CG-BPRR {num_servers} servers x 70 blocks x {num_clients} clients (|R|={concurrency}): "
          f"placement {t1 - t0:.3f} s + routing {t2 - t1:.3f} s = {t2 - t0:.3f} s (target < 1 s)")


def simulate_gtsce(num_requests: int = 10_000, num_servers: int = 30, rate_per_s: float = 0.5) -> None:
    """CG-BP + WS-RR on GTS-CE: ``num_requests`` Poisson requests from one client."""
    net = TopologyZooTopology(file="GtsCe.graph", num_servers=num_servers, a100_fraction=0.2).build(
        np.random.default_rng(0))
    base = Problem(BLOOM_176B, net, 20, 128)
    problem = Problem(BLOOM_176B, net, 20, 128, auto_concurrency(base, [0], rate_per_s, 100))
    placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    arrivals = poisson_arrivals(np.random.default_rng(1), rate_per_s, num_requests, [0])
    t0 = time.perf_counter()
    rows, log = simulate(problem, placement, WsRrRouter(), arrivals)
    dt = time.perf_counter() - t0
    mean = float(np.mean([r["per_token_s"] for r in rows]))
    print(f"simulate {num_requests} requests on GTS-CE ({num_servers} servers, "
          f"|R|={problem.design_concurrency}, λ={rate_per_s}/s): {dt:.2f} s wall, {len(log)} events, "
          f"mean per-token {mean:.3f} s (target < 30 s)")


def milp_gap(time_limit_s: float) -> None:
    """The BPRR MILP on BLOOM-176B: clustered testbed (9 servers; |R| = 2 and 10), GTS-CE with 26 servers."""
    gts = TopologyZooTopology(file="GtsCe.graph", num_servers=26, a100_fraction=0.2, num_clients=2)
    clustered = ClusteredTopology().build(np.random.default_rng(0))
    cases = [("clustered, 9 servers", clustered, 2), ("clustered, 9 servers", clustered, 10),
             ("GTS-CE, 26 servers", gts.build(np.random.default_rng(0)), 2)]
    for name, net, concurrency in cases:
        problem = Problem(BLOOM_176B, net, 20, 128, concurrency)
        t0 = time.perf_counter()
        try:
            sol = solve_bprr(problem, request_clients(problem), time_limit_s)
        except RuntimeError as exc:
            print(f"MILP {name}: no incumbent after {time.perf_counter() - t0:.1f} s ({exc})")
            continue
        dt = time.perf_counter() - t0
        cg = CgBpPlacement().place(problem, np.random.default_rng(0))
        cg_obj = sum(dag_shortest_route(problem, cg, c, *link_costs(problem, c))[1]
                     for c in request_clients(problem))
        print(f"MILP {name}, |R|={concurrency}: {dt:.1f} s, objective {sol.objective_s:.4f} s, "
              f"bound {sol.bound_s:.4f} s, "
              f"gap {100 * sol.gap:.1f}% ({'optimal' if sol.optimal else sol.status}); "
              f"CG-BPRR objective {cg_obj:.4f} s")
        t0 = time.perf_counter()
        tight = solve_tight(problem, request_clients(problem), time_limit_s)
        print(f"  milp_tight: {time.perf_counter() - t0:.1f} s, objective {tight.objective_s:.4f} s, "
              f"bound {tight.bound_s:.4f} s, gap {100 * tight.gap:.3g}% "
              f"({'optimal' if tight.optimal else tight.status})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--milp-time-limit-s", type=float, default=60.0)
    args = parser.parse_args()
    cg_bprr_at_scale()
    simulate_gtsce()
    milp_gap(args.milp_time_limit_s)


if __name__ == "__main__":
    main()
