"""PETALS routing: edge weights, the 10 s no-cache penalty, early exits from a span, uncovered swarms."""

from __future__ import annotations

import pytest

from placement.base import NoRouteError, Placement, SlotView
from placement.perf import check_route
from placement.petals_dijkstra import PetalsDijkstraRouter, backoff_s
from tests.placement.conftest import clustered_problem, toy_problem


def test_prefers_fewer_hops_and_leaves_a_span_early() -> None:
    problem = toy_problem([10.0] * 3, [0.01] * 3, [[0.1, 0.1, 0.1]], num_blocks=6)
    # server 0 hosts 0..3, server 1 hosts 2..5, server 2 hosts 4..5
    placement = Placement((0, 2, 4), (4, 4, 2), (9, 9, 9))
    route = PetalsDijkstraRouter().route(problem, placement, 0, SlotView.idle(placement))
    check_route(problem, placement, route)
    assert len(route.hops) == 2


def test_no_cache_penalty_steers_to_a_server_with_cache() -> None:
    problem = toy_problem([10.0] * 2, [0.01] * 2, [[0.0, 0.0]], num_blocks=2)
    placement = Placement((0, 0), (2, 2), (4, 4))
    full = SlotView((0, 4), ((), ()))
    assert [h.server for h in PetalsDijkstraRouter().route(problem, placement, 0, full).hops] == [1]
    both_full = SlotView((0, 0), ((), ()))
    assert len(PetalsDijkstraRouter().route(problem, placement, 0, both_full).hops) == 1


def test_uses_clustered_swarm_and_rejects_uncovered() -> None:
    problem = clustered_problem()
    placement = Placement((0,) * 9, (53, 0, 0, 0, 0, 0, 0, 0, 0), (10,) * 9)
    with pytest.raises(NoRouteError, match=r"blocks 53\.\.69 \(17 of 70\) uncovered"):
        PetalsDijkstraRouter().route(problem, placement, 0, SlotView.idle(placement))


def test_backoff_validation() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_s(0)
    with pytest.raises(ValueError, match="no_cache_penalty_s"):
        PetalsDijkstraRouter(no_cache_penalty_s=-1)
