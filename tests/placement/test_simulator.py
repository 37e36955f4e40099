"""Simulator: event-log order, cache capacity, PETALS backoff, Theorem-2 bound when ≤ |R| requests run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from placement.base import Placement
from placement.cg_bp import CgBpPlacement
from placement.perf import theorem2_bound_s
from placement.petals_dijkstra import PetalsDijkstraRouter, backoff_s
from placement.shortest_path import ShortestPathRouter
from placement.simulator import REQUEST_COLUMNS, poisson_arrivals, simulate
from placement.ws_rr import WsRrRouter
from tests.placement.conftest import clustered_problem, toy_problem


def _peak_slots(rows: list[dict[str, object]], server: int) -> int:
    """Max over time of block-sessions held on ``server``, rebuilt from the request rows."""
    events = []
    for r in rows:
        k = sum(int(h.split("[")[1].split(":")[1].rstrip("]")) - int(h.split("[")[1].split(":")[0])
                for h in str(r["path"]).split(">") if int(h.split("[")[0]) == server)
        start = float(r["arrival_s"]) + float(r["allocation_delay_s"]) + float(r["wait_s"])  # type: ignore[arg-type]
        events += [(start, k), (float(r["completion_s"]), -k)]  # type: ignore[arg-type]
    level, peak = 0, 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        level += d
        peak = max(peak, level)
    return peak


def test_event_log_order_and_columns() -> None:
    problem = clustered_problem(64, 10)
    placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    arrivals = poisson_arrivals(np.random.default_rng(1), 0.5, 30, [0])
    rows, log = simulate(problem, placement, WsRrRouter(), arrivals)
    assert set(REQUEST_COLUMNS) <= set(rows[0])
    times: dict[int, dict[str, float]] = {}
    for e in log:
        times.setdefault(e.request_id, {})[e.kind] = e.time_s
    assert len(times) == 30
    for rid, t in times.items():
        assert t["arrive"] == pytest.approx(arrivals[rid][0])
        assert t["arrive"] <= t["start"] < t["done"]
    assert [e.time_s for e in log] == sorted(e.time_s for e in log)


def test_cache_slots_are_never_oversubscribed_and_requests_wait() -> None:
    # One server with room for 2 sessions of all 4 blocks: the third concurrent request must wait.
    problem = toy_problem([4.85], [0.01], [[0.0]], num_blocks=4, concurrency=2)
    placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    assert placement.cache_slots == (8,)
    arrivals = [(0.0, 0), (0.001, 0), (0.002, 0), (0.003, 0)]
    rows, _ = simulate(problem, placement, ShortestPathRouter(), arrivals)
    assert _peak_slots(rows, 0) <= 8
    df = pd.DataFrame(rows)
    assert (df["wait_s"] > 0).sum() == 2
    assert df["wait_s"].iloc[2] == pytest.approx(df["completion_s"].iloc[0] - 0.002)


def test_petals_retries_with_exponential_backoff() -> None:
    # A fixed pool of exactly one session: the second request retries after 1 s, 2 s, 4 s, ...
    problem = toy_problem([10.0], [0.01], [[0.0]], num_blocks=2, concurrency=1)
    placement = Placement((0,), (2,), (2,), policy="fixed")
    rows, log = simulate(problem, placement, PetalsDijkstraRouter(), [(0.0, 0), (0.0, 0)])
    retries = [e for e in log if e.kind == "retry"]
    assert retries, "the second request must retry"
    gaps = np.diff([e.time_s for e in retries])
    assert list(gaps) == [backoff_s(n) for n in range(1, len(retries))]
    assert [backoff_s(n) for n in (1, 2, 3, 7, 8)] == [1, 2, 4, 60, 60]
    assert rows[1]["attempts"] == len(retries) + 1


@pytest.mark.parametrize("concurrency", [4, 12])
def test_theorem2_bound_holds_when_concurrency_stays_within_r(concurrency: int) -> None:
    problem = clustered_problem(128, concurrency)
    placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    bound = theorem2_bound_s(problem, placement)
    # Arrivals spaced so that at most |R| requests overlap (service ≈ 85 s).
    service_guess = 200.0
    arrivals = [(i * service_guess / concurrency, c) for i, c in enumerate([0, 1, 2] * concurrency)]
    rows, log = simulate(problem, placement, ShortestPathRouter(), arrivals)
    active, peak = 0, 0
    for e in log:
        active += {"start": 1, "done": -1}.get(e.kind, 0)
        peak = max(peak, active)
    assert peak <= concurrency
    for r in rows:
        assert r["wait_s"] == 0
        assert r["decode_token_s"] <= bound + 1e-9


def test_allocation_delay_knob_adds_latency_only() -> None:
    problem = clustered_problem(64, 10)
    placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    off, _ = simulate(problem, placement, WsRrRouter(), [(0.0, 0)])
    on, _ = simulate(problem, placement, WsRrRouter(allocation_delay_s=60.0), [(0.0, 0)])
    assert on[0]["per_token_s"] - off[0]["per_token_s"] == pytest.approx(60.0 / 64)
    assert on[0]["wait_s"] == off[0]["wait_s"] == 0


def test_poisson_arrivals_are_seeded_and_validated() -> None:
    a = poisson_arrivals(np.random.default_rng(5), 0.5, 50, [0, 1])
    assert a == poisson_arrivals(np.random.default_rng(5), 0.5, 50, [0, 1])
    assert len(a) == 50
    assert a == sorted(a)
    with pytest.raises(ValueError, match="arrival_rate_per_s"):
        poisson_arrivals(np.random.default_rng(0), 0.0, 5, [0])


def test_route_needing_more_slots_than_a_server_has_fails_instead_of_retrying_forever() -> None:
    # One server hosts both blocks but has a single cache slot: PETALS would back off forever.
    problem = toy_problem([10.0], [0.01], [[0.0]], num_blocks=2, concurrency=1)
    placement = Placement((0,), (2,), (1,), policy="tiny_pool")
    with pytest.raises(ValueError, match="needs 2 cache slots on server 0, which has 1"):
        simulate(problem, placement, PetalsDijkstraRouter(), [(0.0, 0)])
