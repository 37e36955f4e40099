"""Shortest path over the feasible-link DAG (Lemma 1): positions 0..L, hop to server j ends at a_j + m_j."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from placement.base import Hop, NoRouteError, Placement, Problem, Route

# (server indices, blocks processed k) → extra cost per candidate link (e.g. WS-RR waiting time)
ExtraCost = Callable[[np.ndarray, np.ndarray], np.ndarray]


def dag_shortest_route(problem: Problem, placement: Placement, client: int, base_s: np.ndarray,
                       per_block_s: np.ndarray, extra: ExtraCost | None = None) -> tuple[Route, float]:
    """Min-cost chain: link (b → end_j) for a_j ≤ b ≤ end_j − 1 costs base_j + per_block_j·(end_j − b) +
    extra.

    Positions only increase, so one forward pass in position order is Dijkstra on this DAG (CG-BPRR step 3).
    """
    L = problem.num_blocks
    start = np.asarray(placement.start)
    count = np.asarray(placement.count)
    end = start + count
    dist = np.full(L + 1, np.inf)
    dist[0] = 0.0
    prev_pos = np.full(L + 1, -1)
    prev_server = np.full(L + 1, -1)
    for b in range(L):
        if not np.isfinite(dist[b]):
            continue
        cand = np.nonzero((count > 0) & (start <= b) & (b < end))[0]
        if cand.size == 0:
            continue
        k = end[cand] - b
        cost = dist[b] + base_s[cand] + per_block_s[cand] * k
        if extra is not None:
            cost = cost + extra(cand, k)
        targets = end[cand]
        better = cost < dist[targets]
        # Several servers may share an end: keep the cheapest (first on ties) per target.
        for idx in np.nonzero(better)[0]:
            t = targets[idx]
            if cost[idx] < dist[t]:
                dist[t], prev_pos[t], prev_server[t] = cost[idx], b, cand[idx]
    if not np.isfinite(dist[L]):
        reach = int(np.max(np.nonzero(np.isfinite(dist))[0]))
        raise NoRouteError(f"client {problem.network.clients[client]!r}: no chain of servers covers block "
                           f"{reach} (blocks {reach}..{L - 1} unreachable, {placement.policy or '?'}); "
                           f"place more servers or lower the design concurrency")
    hops, pos = [], L
    while pos > 0:
        b, j = int(prev_pos[pos]), int(prev_server[pos])
        hops.append(Hop(j, b, pos))
        pos = b
    return Route(tuple(reversed(hops))), float(dist[L])


def link_costs(problem: Problem, client: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token link cost split into t_cj (RTT + overhead) and τ_j (§III)."""
    base = problem.network.client_rtt_s[client] + problem.overheads.per_token_s
    tau = np.array([s.tau_s for s in problem.network.servers])
    return base, tau
