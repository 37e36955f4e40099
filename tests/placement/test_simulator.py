"""Simulator: event-log order, cache capacity, PETALS backoff, Theorem-2 bound when ≤ |R| requests run, and the
opt-in server compute model (hops queue for a bounded server; off reproduces the model without it exactly)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from placement.base import Placement
from placement.cg_bp import CgBpPlacement
from placement.perf import theorem2_bound_s
from placement.petals import PetalsPlacement
from placement.petals_dijkstra import PetalsDijkstraRouter, backoff_s
from placement.shortest_path import ShortestPathRouter
from placement.simulator import REQUEST_COLUMNS, Event, ServerCompute, poisson_arrivals, simulate
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


# sha256 of the request table and event log of two seeded runs, computed with the simulator before the compute
# model existed (placement/simulator.py at 2c00daa): without contention the results must stay exactly these.
GOLDEN = {"cg_bp": "f7b900bfeb8250fb4b59a4f5746fe50ae34a034c0d018b9c541c226c105c38c6",
          "petals": "f2c723d16ab87a4f7d2c2f686403b06fb217642d6742e81dd6c358930efca8f5"}


def _digest(rows: list[dict[str, object]], log: list[Event]) -> str:
    text = pd.DataFrame(rows).to_csv(float_format="%.9g") + "".join(
        f"{e.time_s:.9g}{e.kind}{e.request_id}{e.detail}" for e in log)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("unbounded", [None, (None,), (0,)])
def test_unbounded_compute_reproduces_the_old_results_exactly(unbounded: tuple[int | None, ...] | None) -> None:
    problem = clustered_problem(64, 10)
    arrivals = poisson_arrivals(np.random.default_rng(1), 0.5, 30, [0])
    for name, pl, router in (("cg_bp", CgBpPlacement(), WsRrRouter()),
                             ("petals", PetalsPlacement(), PetalsDijkstraRouter())):
        placement = pl.place(problem, np.random.default_rng(0))
        compute = None if unbounded is None else ServerCompute(unbounded * len(placement.cache_slots))
        rows, log = simulate(problem, placement, router, arrivals, compute=compute)
        assert _digest(rows, log) == GOLDEN[name], name
        assert "compute_wait_s" not in rows[0]


def _two_sessions_one_server(capacity: int, share: float = 1.0) -> tuple[list[dict[str, object]], list[Event]]:
    problem = replace(toy_problem([10.0], [0.005], [[0.0]], num_blocks=2, concurrency=2), max_tokens=3)
    placement = Placement((0,), (2,), (4,), policy="fixed")  # room for both sessions' slots: no slot wait
    shares = (share,) if share != 1.0 else ()
    return simulate(problem, placement, ShortestPathRouter(), [(0.0, 0), (0.0, 0)],
                    compute=ServerCompute((capacity,), shares))


def test_capacity_one_makes_the_second_session_wait_for_the_first_ones_compute() -> None:
    rows, log = _two_sessions_one_server(1)
    prefill_compute_s = 0.01 * 2  # τ^I (base 0.01 s, slope 0) × 2 blocks
    computes = [e for e in log if e.kind == "compute"]
    assert len(computes) == 2 * 3  # 2 sessions × (prefill + 2 decode steps) × 1 hop
    first = [e for e in computes if e.request_id == 0]
    second = [e for e in computes if e.request_id == 1]
    assert all(e.wait_s == 0 for e in first)
    assert second[0].wait_s == pytest.approx(prefill_compute_s)
    assert second[0].time_s - first[0].time_s == pytest.approx(prefill_compute_s)
    # decode hops come back after the relay latency (> 20 ms), so they no longer collide
    assert [e.wait_s for e in second[1:]] == [0, 0]
    assert rows[1]["compute_wait_s"] == pytest.approx(prefill_compute_s)
    assert float(rows[1]["ttft_s"]) - float(rows[0]["ttft_s"]) == pytest.approx(prefill_compute_s)  # type: ignore[arg-type]
    assert rows[0]["wait_s"] == rows[1]["wait_s"] == 0  # slots were free: the wait is for compute only


def test_capacity_two_or_a_partial_share_shortens_the_wait() -> None:
    _, log2 = _two_sessions_one_server(2)
    assert all(e.wait_s == 0 for e in log2 if e.kind == "compute")
    _, log_share = _two_sessions_one_server(1, share=0.25)  # an emulated slower device: only 1/4 is compute
    waits = [e.wait_s for e in log_share if e.kind == "compute" and e.request_id == 1]
    assert waits[0] == pytest.approx(0.25 * 0.02)


def test_fixed_busy_time_queues_too_but_keeps_an_uncontended_hop_as_long() -> None:
    problem = replace(toy_problem([10.0], [0.005], [[0.0]], num_blocks=2, concurrency=2), max_tokens=3)
    placement = Placement((0,), (2,), (4,), policy="fixed")
    plain, _ = simulate(problem, placement, ShortestPathRouter(), [(0.0, 0)])
    compute = ServerCompute((1,), fixed_busy_s=(0.004,), prefill_fixed_busy_s=(0.003,))
    alone, _ = simulate(problem, placement, ShortestPathRouter(), [(0.0, 0)], compute=compute)
    assert alone[0]["completion_s"] == pytest.approx(plain[0]["completion_s"], rel=1e-12)
    _, log = simulate(problem, placement, ShortestPathRouter(), [(0.0, 0), (0.0, 0)], compute=compute)
    second = [e for e in log if e.kind == "compute" and e.request_id == 1]
    assert second[0].wait_s == pytest.approx(0.02 + 0.003)  # the first one's prefill: 2 blocks × τ^I + fixed


def test_bounded_compute_without_overlap_matches_the_paper_model() -> None:
    # Hop-by-hop service with a bound that never binds sums to route_times: same per-token time and TTFT.
    problem = clustered_problem(64, 10)
    placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    arrivals = [(0.0, 0), (500.0, 1)]
    old, _ = simulate(problem, placement, WsRrRouter(), arrivals)
    new, log = simulate(problem, placement, WsRrRouter(), arrivals,
                        compute=ServerCompute((1,) * len(placement.cache_slots)))
    assert any(e.kind == "compute" for e in log)
    for a, b in zip(old, new, strict=True):
        for key in ("per_token_s", "ttft_s", "service_s", "completion_s"):
            assert b[key] == pytest.approx(a[key], rel=1e-9), key
        assert b["compute_wait_s"] == 0


def test_server_compute_is_validated() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ServerCompute((-1,))
    with pytest.raises(ValueError, match="busy_share"):
        ServerCompute((1,), (0.0,))
    with pytest.raises(ValueError, match="fixed_busy_s"):
        ServerCompute((1,), fixed_busy_s=(0.1, 0.1))
    problem = toy_problem([10.0], [0.01], [[0.0]], num_blocks=2, concurrency=1)
    with pytest.raises(ValueError, match="one per server"):
        simulate(problem, Placement((0,), (2,), (2,), policy="fixed"), ShortestPathRouter(), [(0.0, 0)],
                 compute=ServerCompute((1, 1)))
