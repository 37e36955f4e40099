"""CG-BPRR step 3: the DAG shortest path equals the best chain found by enumeration; uncovered blocks fail."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.base import NoRouteError, Placement, SlotView
from placement.dag import dag_shortest_route, link_costs
from placement.instances import random_problem
from placement.perf import check_route, hop_token_s, route_times
from placement.shortest_path import ShortestPathRouter
from tests.placement.conftest import toy_problem
from tests.placement.test_milp import _chains


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), servers=st.integers(1, 6), blocks=st.integers(2, 8))
def test_shortest_path_matches_enumeration(seed: int, servers: int, blocks: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, servers, blocks, 1, 1)
    count = tuple(int(rng.integers(0, blocks + 1)) for _ in range(servers))
    start = tuple(int(rng.integers(0, blocks - m + 1)) for m in count)
    placement = Placement(start, count, (10,) * servers)
    chains = _chains(problem, start, count)
    costs = [sum(hop_token_s(problem, 0, j, k) for j, k in chain) for chain in chains]
    if not chains:
        with pytest.raises(NoRouteError):
            ShortestPathRouter().route(problem, placement, 0, SlotView.idle(placement))
        return
    route = ShortestPathRouter().route(problem, placement, 0, SlotView.idle(placement))
    check_route(problem, placement, route)
    assert route_times(problem, 0, route).decode_token_s == pytest.approx(min(costs))
    assert dag_shortest_route(problem, placement, 0, *link_costs(problem, 0))[1] == pytest.approx(min(costs))


def test_no_route_names_the_first_uncovered_block() -> None:
    problem = toy_problem([10.0, 10.0], [0.01, 0.01], [[0.0, 0.0]], num_blocks=6)
    placement = Placement((0, 4), (3, 2), (5, 5))  # block 3 hosted by nobody
    with pytest.raises(NoRouteError, match="block 3"):
        ShortestPathRouter().route(problem, placement, 0, SlotView.idle(placement))


def test_link_time_by_hand() -> None:
    problem = toy_problem([10.0], [0.02], [[0.05]], num_blocks=3)
    # t_cj + τ_j k = (0.05 RTT + 0.1 overhead) + 0.02·3
    assert hop_token_s(problem, 0, 0, 3) == pytest.approx(0.21)
