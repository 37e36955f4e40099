"""Ablation "Opt Num" (Sun et al. §VI): CG-BP's block counts and leftover cache, PETALS' random join order."""

from __future__ import annotations

import numpy as np

from placement.base import Placement, Problem
from placement.cg_bp import cg_block_count, check_counts_feasible, leftover_cache_slots
from placement.petals import join_lexicographic


class OptNumPlacement:
    """CG-BPRR step 1 (m_j for |R|) with PETALS' lexicographic throughput windows (isolates the block
    count)."""

    def place(self, problem: Problem, rng: np.random.Generator) -> Placement:
        """Random join order from ``rng``; raises InfeasiblePlacementError when Σ m_j < L."""
        n = len(problem.network.servers)
        counts = [cg_block_count(problem, j) for j in range(n)]
        check_counts_feasible(problem, counts)
        start = join_lexicographic(problem, counts, [int(j) for j in rng.permutation(n)])
        slots = [leftover_cache_slots(problem, j, m) if m else 0 for j, m in enumerate(counts)]
        return Placement(tuple(start), tuple(counts), tuple(slots), policy="opt_num")
