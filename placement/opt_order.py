"""Ablation "Opt Order" (Sun et al. §VI): PETALS' block counts, CG-BP's order and window choice."""

from __future__ import annotations

import numpy as np

from placement.base import Placement, Problem
from placement.cg_bp import amortized_order, greedy_assign
from placement.petals import petals_block_count, petals_cache_slots


class OptOrderPlacement:
    """PETALS' m_j and cache pool with CG-BPRR step 2 (isolates the benefit of the placement order)."""

    def place(self, problem: Problem, rng: np.random.Generator) -> Placement:
        """Deterministic; blocks may end up covered for fewer than |R| sessions (requests then wait)."""
        counts = [petals_block_count(problem, j) for j in range(len(problem.network.servers))]
        slots = [petals_cache_slots(problem, m) for m in counts]
        caps = [s // m if m else 0 for s, m in zip(slots, counts, strict=True)]
        # strict=False: the fixed pool may serve fewer than |R| sessions; requests then wait.
        start = greedy_assign(problem, counts, amortized_order(problem, counts), caps, strict=False)
        return Placement(tuple(start), tuple(counts), tuple(slots), policy="opt_order")
