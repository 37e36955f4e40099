"""CG-BPRR steps 1–2 (Sun, He, Ji, Parag §IV): conservative block counts, greedy placement."""

from __future__ import annotations

import numpy as np

from placement.base import InfeasiblePlacementError, Placement, Problem
from placement.perf import amortized_block_s, infeasible_placement
from placement.petals import lex_smallest_window


def cg_block_count(problem: Problem, j: int) -> int:
    """Step 1: m_j = min(⌊M_j / (s_m + s_c·|R|)⌋, L) — cache reserved for |R| requests on every block."""
    server = problem.network.servers[j]
    per_block = problem.model.block_gb + problem.cache_gb * problem.design_concurrency
    count = int(np.floor(problem.usable_mem_gb(j) / per_block + 1e-12))
    limit = problem.num_blocks if server.max_blocks is None else min(problem.num_blocks, server.max_blocks)
    return max(0, min(limit, count))


def leftover_cache_slots(problem: Problem, j: int, count: int) -> int:
    """Block-sessions in the memory left after the blocks: ⌊(M_j − s_m m_j) / s_c⌋."""
    free_gb = problem.usable_mem_gb(j) - problem.model.block_gb * count
    return max(0, int(np.floor(free_gb / problem.cache_gb + 1e-9)))


def greedy_assign(problem: Problem, counts: list[int], order: list[int], caps: list[int] | None = None,
                  strict: bool = True) -> list[int]:
    """Step 2: each server in ``order`` takes a window; if ``strict``, InfeasiblePlacementError when some
    C_b < |R|. ``caps`` overrides cap_j (sessions on all of j's blocks), e.g. for PETALS' fixed cache pool.

    Under-served blocks exist → the window containing one with the largest Σ T_b (ties: smallest start);
    else the window whose sorted capacity vector is lexicographically smallest. Then
    T_b −= (t0 − t̃_j)·min((|R| − C_b)⁺, cap_j) and C_b += cap_j, with
    cap_j = ⌊(M_j − s_m m_j)/(s_c m_j)⌋ and a virtual server t0 = max t̃ + 1.
    """
    L, R = problem.num_blocks, problem.design_concurrency
    used = [j for j in order if counts[j] > 0]
    t_tilde = {j: amortized_block_s(problem, j, counts[j]) for j in used}
    t0 = max(t_tilde.values(), default=0.0) + 1.0
    cap_blocks = np.zeros(L)
    time_blocks = np.full(L, R * t0)
    start = [0] * len(counts)
    for j in used:
        m = counts[j]
        cap = leftover_cache_slots(problem, j, m) // m if caps is None else caps[j]
        under = cap_blocks < R
        if under.any():
            window_time = np.convolve(time_blocks, np.ones(m), mode="valid")  # Σ T_b over each window
            window_under = np.convolve(under.astype(float), np.ones(m), mode="valid") > 0
            window_time[~window_under] = -np.inf
            a = int(np.argmax(window_time))  # argmax returns the first (smallest start) on ties
        else:
            a = lex_smallest_window(cap_blocks, m)
        start[j] = a
        span = slice(a, a + m)
        time_blocks[span] -= (t0 - t_tilde[j]) * np.minimum(np.maximum(R - cap_blocks[span], 0), cap)
        cap_blocks[span] += cap
    short = cap_blocks < R
    if strict and short.any():
        missing = np.maximum(R - cap_blocks, 0)
        gb = float(missing.sum() * problem.cache_gb + (cap_blocks == 0).sum() * problem.model.block_gb)
        raise InfeasiblePlacementError(int(short.sum()), gb,
                                       f"{int(short.sum())} of L={L} blocks serve < |R|={R} requests")
    return start


def check_counts_feasible(problem: Problem, counts: list[int]) -> None:
    """Online feasibility (§V): Σ_j min(⌊M_j/(s_m+s_c|R|)⌋, L) ≥ L, else InfeasiblePlacementError with the
    shortfall."""
    total = sum(counts)
    if total < problem.num_blocks:
        short = problem.num_blocks - total
        per_block = problem.model.block_gb + problem.cache_gb * problem.design_concurrency
        raise infeasible_placement(problem, f"servers hold {total} blocks at |R|={problem.design_concurrency}",
                                   short, short * per_block)


def amortized_order(problem: Problem, counts: list[int]) -> list[int]:
    """Servers sorted by t̃_j (step 2), index as tie-break; servers holding no block go last."""
    key = {j: amortized_block_s(problem, j, m) if m > 0 else np.inf for j, m in enumerate(counts)}
    return sorted(range(len(counts)), key=lambda j: (key[j], j))


class CgBpPlacement:
    """CG-BP: CG-BPRR steps 1–2; cache slots are the leftover memory (the paper's memory model)."""

    def place(self, problem: Problem, rng: np.random.Generator) -> Placement:
        """Deterministic (``rng`` unused). Raises InfeasiblePlacementError with the shortfall."""
        n = len(problem.network.servers)
        counts = [cg_block_count(problem, j) for j in range(n)]
        check_counts_feasible(problem, counts)
        start = greedy_assign(problem, counts, amortized_order(problem, counts))
        slots = [leftover_cache_slots(problem, j, m) if m else 0 for j, m in enumerate(counts)]
        return Placement(tuple(start), tuple(counts), tuple(slots), policy="cg_bp")
