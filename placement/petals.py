"""PETALS' block placement (Borzunov et al. 2023, ANCHORS §3): fixed cache pool, lexicographic windows."""

from __future__ import annotations

import numpy as np

from placement.base import Placement, Problem

PETALS_CACHE_TOKENS = 4096  # PETALS' attention-cache pool per hosted block, in tokens


def petals_block_count(problem: Problem, j: int) -> int:
    """min(L, ⌊(GPU memory − autograd reserve) / (block bytes + 4096-token cache per block)⌋) (ANCHORS §3)."""
    server = problem.network.servers[j]
    per_block = problem.model.block_gb + problem.model.cache_gb(PETALS_CACHE_TOKENS)
    count = int(np.floor(problem.usable_mem_gb(j) / per_block + 1e-12))
    limit = problem.num_blocks if server.max_blocks is None else min(problem.num_blocks, server.max_blocks)
    return max(0, min(limit, count))


def petals_cache_slots(problem: Problem, count: int) -> int:
    """Block-sessions that fit the fixed pool: ⌊m · 4096 / (l^I + l_max)⌋ (not the leftover memory)."""
    return count * PETALS_CACHE_TOKENS // (problem.input_tokens + problem.max_tokens)


def server_throughput_rps(problem: Problem, j: int, count: int) -> float:
    """min(inference_rps / ((m + 1) / 2), network_rps) (ANCHORS §3)."""
    s = problem.network.servers[j]
    return min(s.inference_rps / ((count + 1) / 2), s.network_rps)


def lex_smallest_window(values: np.ndarray, width: int) -> int:
    """Start of the length-``width`` window whose *sorted* values are lexicographically smallest (ties:
    smallest)."""
    windows = np.sort(np.lib.stride_tricks.sliding_window_view(values, width), axis=1)
    # lexsort keys run last-to-first and are stable, so equal windows keep the smallest start first.
    return int(np.lexsort(windows.T[::-1])[0])


def swarm_throughput(problem: Problem, start: list[int], count: list[int]) -> np.ndarray:
    """Per-block throughput: the sum of throughputs of servers covering the block."""
    per_block = np.zeros(problem.num_blocks)
    for j, (a, m) in enumerate(zip(start, count, strict=True)):
        if m > 0:
            per_block[a:a + m] += server_throughput_rps(problem, j, m)
    return per_block


def join_lexicographic(problem: Problem, counts: list[int], order: list[int],
                       rebalance_rounds: int = 0, balance_quality: float = 0.75) -> list[int]:
    """Servers join in ``order``, each taking the lexicographically smallest sorted-throughput window; then
    up to
    ``rebalance_rounds`` passes move a server when the bottleneck improves so that old/new <
    ``balance_quality``."""
    start = [0] * len(counts)
    active = [0] * len(counts)  # counts of servers that have joined
    for j in order:
        if counts[j] == 0:
            continue
        start[j] = lex_smallest_window(swarm_throughput(problem, start, active), counts[j])
        active[j] = counts[j]
    for _ in range(rebalance_rounds):
        moved = False
        for j in order:
            if counts[j] == 0:
                continue
            old = swarm_throughput(problem, start, active).min()
            without = list(active)
            without[j] = 0
            candidate = lex_smallest_window(swarm_throughput(problem, start, without), counts[j])
            trial = list(start)
            trial[j] = candidate
            new = swarm_throughput(problem, trial, active).min()
            if candidate != start[j] and new > 0 and old / new < balance_quality:
                start, moved = trial, True
        if not moved:
            break
    return start


class PetalsPlacement:
    """PETALS: block counts with a fixed 4096-token cache pool, random join order, lexicographic window
    choice."""

    def __init__(self, rebalance_rounds: int = 0, balance_quality: float = 0.75) -> None:
        if rebalance_rounds < 0:
            raise ValueError(f"rebalance_rounds={rebalance_rounds} is invalid; allowed: >= 0")
        if not 0 < balance_quality <= 1:
            raise ValueError(f"balance_quality={balance_quality} is invalid; allowed: 0 < q <= 1")
        self.rebalance_rounds, self.balance_quality = rebalance_rounds, balance_quality

    def place(self, problem: Problem, rng: np.random.Generator) -> Placement:
        """Place every server; the swarm may leave blocks uncovered (routers then raise NoRouteError)."""
        n = len(problem.network.servers)
        counts = [petals_block_count(problem, j) for j in range(n)]
        order = [int(j) for j in rng.permutation(n)]
        start = join_lexicographic(problem, counts, order, self.rebalance_rounds, self.balance_quality)
        slots = [petals_cache_slots(problem, m) for m in counts]
        return Placement(tuple(start), tuple(counts), tuple(slots), policy="petals")
