"""Exhaustive BPRR for tiny instances, written from the problem's definition in docs/placement.md ("The BPRR
problem"), not from either MILP: every placement, every route per request, memory checked per server."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from placement.base import Problem


@dataclass(frozen=True)
class Exhaustive:
    """The optimum (inf when no placement serves every request) and one optimal placement (start, count)."""

    objective_s: float
    start: tuple[int, ...]
    count: tuple[int, ...]


def windows(problem: Problem, j: int) -> list[tuple[int, int]]:
    """Server j's choices: host nothing (0, 0) or blocks a..a+m-1 with 1 ≤ m ≤ min(L, max_blocks)."""
    L, cap = problem.num_blocks, problem.network.servers[j].max_blocks
    top = L if cap is None else min(L, cap)
    return [(0, 0)] + [(a, m) for m in range(1, top + 1) for a in range(L - m + 1)]


def routes(num_blocks: int, start: tuple[int, ...], count: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Every route: hops (server, blocks run) from block 0 to L; a hop entered at block b on a server hosting
    a..e-1 needs a ≤ b < e and runs b..e-1."""
    out: list[tuple[tuple[int, int], ...]] = []

    def walk(b: int, hops: tuple[tuple[int, int], ...]) -> None:
        if b == num_blocks:
            out.append(hops)
            return
        for j, (a, m) in enumerate(zip(start, count, strict=True)):
            if m and a <= b < a + m:
                walk(a + m, (*hops, (j, a + m - b)))

    walk(0, ())
    return out


def exhaustive_bprr(problem: Problem, clients: list[int]) -> Exhaustive:
    """Minimum over placements and routes of Σ_r Σ_hops (RTT(c_r, j) + per-token overhead + τ_j·k), subject to
    s_m·m_j + s_c·Σ_r k^r_j ≤ mem_j − reserve on every server that hosts a block."""
    S = len(problem.network.servers)
    s_m, s_c = problem.model.block_gb, problem.cache_gb
    budget = [problem.usable_mem_gb(j) for j in range(S)]
    best = Exhaustive(float("inf"), (), ())
    per_client = {c: problem.network.client_rtt_s[c] + problem.overheads.per_token_s for c in set(clients)}
    tau = [s.tau_s for s in problem.network.servers]
    for combo in itertools.product(*(windows(problem, j) for j in range(S))):
        start = tuple(w[0] for w in combo)
        count = tuple(w[1] for w in combo)
        if any(count[j] and s_m * count[j] > budget[j] + 1e-9 for j in range(S)):
            continue
        chains = routes(problem.num_blocks, start, count)
        if not chains:
            continue
        for pick in itertools.product(chains, repeat=len(clients)):
            sessions = [0] * S
            cost = 0.0
            for c, chain in zip(clients, pick, strict=True):
                for j, k in chain:
                    sessions[j] += k
                    cost += float(per_client[c][j]) + tau[j] * k
            if cost < best.objective_s and all(
                not count[j] or s_m * count[j] + s_c * sessions[j] <= budget[j] + 1e-9 for j in range(S)
            ):
                best = Exhaustive(cost, start, count)
    return best


def memory_used_gb(problem: Problem, count: tuple[int, ...], hops: list[tuple[int, int]]) -> np.ndarray:
    """s_m·m_j + s_c·Σ k per server, for checking a solution's routes (``hops``: (server, blocks run))."""
    used = problem.model.block_gb * np.asarray(count, dtype=float)
    for j, k in hops:
        used[j] += problem.cache_gb * k
    return used
