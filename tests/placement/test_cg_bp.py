"""CG-BP (CG-BPRR steps 1–2): paper block counts, coverage for |R|, memory, shortfall errors, ablations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.base import InfeasiblePlacementError
from placement.cg_bp import CgBpPlacement, cg_block_count
from placement.instances import random_problem
from placement.opt_num import OptNumPlacement
from placement.opt_order import OptOrderPlacement
from tests.placement.conftest import clustered_problem, toy_problem


@pytest.mark.parametrize("concurrency", [80, 82, 85])
def test_clustered_block_counts_are_41_and_3(concurrency: int) -> None:
    # The paper's 41 (A100) / 3 (MIG) come out for |R| in 80..85 at l_max = 128 (s_c = 8.49 MB).
    problem = clustered_problem(128, concurrency)
    placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    counts = {(s.name, m) for s, m in zip(problem.network.servers, placement.count, strict=True)}
    assert counts == {("a100", 41), ("mig", 3)}


def test_step1_formula_by_hand() -> None:
    problem = toy_problem([5.55], [0.01], [[0.0]], num_blocks=8, concurrency=3)
    # ⌊5.55 / (1 + 0.1·3)⌋ = 4
    assert cg_block_count(problem, 0) == 4


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), servers=st.integers(2, 12), blocks=st.integers(3, 20),
       requests=st.integers(1, 4))
def test_feasible_placements_cover_every_block_for_r_sessions_within_memory(
        seed: int, servers: int, blocks: int, requests: int) -> None:
    problem = random_problem(np.random.default_rng(seed), servers, blocks, 1, requests)
    try:
        placement = CgBpPlacement().place(problem, np.random.default_rng(seed))
    except InfeasiblePlacementError as exc:
        shortfall = (exc.shortfall_blocks, exc.shortfall_gb)
    else:
        shortfall = None
    if shortfall is not None:
        assert shortfall[0] > 0
        assert shortfall[1] > 0
        return
    capacity = np.zeros(blocks)
    for j, (a, m) in enumerate(zip(placement.start, placement.count, strict=True)):
        if m:
            assert a >= 0
            assert a + m <= blocks
            used = problem.model.block_gb * m + problem.cache_gb * requests * m
            assert used <= problem.usable_mem_gb(j) + 1e-9
            capacity[a:a + m] += placement.cache_slots[j] // m
    assert (capacity >= requests).all()


def test_infeasible_instance_reports_shortfall_in_blocks_and_gb() -> None:
    problem = toy_problem([2.5, 2.5], [0.01, 0.01], [[0.0, 0.0]], num_blocks=6, concurrency=2)
    with pytest.raises(InfeasiblePlacementError, match="2 block") as info:
        CgBpPlacement().place(problem, np.random.default_rng(0))
    # each server holds ⌊2.5 / 1.2⌋ = 2 blocks → 4 of 6; 2 blocks × 1.2 GB missing
    assert info.value.shortfall_blocks == 2
    assert info.value.shortfall_gb == pytest.approx(2.4)


def test_ablations_keep_their_block_counts() -> None:
    problem = clustered_problem(128, 82)
    order = OptOrderPlacement().place(problem, np.random.default_rng(0))
    num = OptNumPlacement().place(problem, np.random.default_rng(0))
    assert sorted(set(order.count)) == [4, 53]
    assert sorted(set(num.count)) == [3, 41]
    assert order.covered(70)
    assert num.covered(70)
