"""PETALS' routing (Borzunov et al. 2023, ANCHORS §3): Dijkstra over (server, block) with its edge weights."""

from __future__ import annotations

import heapq

from placement.base import Hop, NoRouteError, Placement, Problem, Route, SlotView

NO_CACHE_PENALTY_S = 10.0  # PETALS adds 10 s to a server that lacks attention cache for the session


def backoff_s(attempt: int, cap_s: float = 60.0) -> float:
    """PETALS' retry delay after failed allocation attempt n (1-based): min(2^(n−1), 60) s."""
    if attempt < 1:
        raise ValueError(f"attempt={attempt} is invalid; allowed: >= 1")
    return float(min(2 ** (attempt - 1), cap_s))


class PetalsDijkstraRouter:
    """Edge weights: client→server rtt/2 + 0.018 s, 1/inference_rps per block, server→server rtt/2 + 0.018 s,
    +10 s where the server lacks cache; a hop may leave a server's span early. Failed allocation → backoff."""

    waits_in_queue = False

    def __init__(self, allocation_delay_s: float = 0.0, no_cache_penalty_s: float = NO_CACHE_PENALTY_S,
                 backoff_cap_s: float = 60.0) -> None:
        for key, value in (("allocation_delay_s", allocation_delay_s),
                           ("no_cache_penalty_s", no_cache_penalty_s), ("backoff_cap_s", backoff_cap_s)):
            if value < 0:
                raise ValueError(f"{key}={value} is invalid; allowed: >= 0")
        self.allocation_delay_s = allocation_delay_s
        self.no_cache_penalty_s = no_cache_penalty_s
        self.backoff_cap_s = backoff_cap_s

    def retry_after_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.backoff_cap_s)

    def route(self, problem: Problem, placement: Placement, client: int, view: SlotView) -> Route:
        """Dijkstra from the client (block 0) to block L; NoRouteError when the swarm leaves a block
        uncovered."""
        L, ser = problem.num_blocks, problem.overheads.petals_serialization_s
        net = problem.network
        used = [j for j, m in enumerate(placement.count) if m > 0]
        # Optimal switch points lie on span boundaries (per-block costs are constant inside a span).
        cuts = sorted({0, L} | {placement.start[j] for j in used} | {placement.end(j) for j in used})
        per_block = {j: 1.0 / net.servers[j].inference_rps for j in used}
        # State (position, server that produced it); -1 = the client, before block 0.
        dist: dict[tuple[int, int], float] = {(0, -1): 0.0}
        prev: dict[tuple[int, int], tuple[int, int]] = {}
        heap: list[tuple[float, int, int]] = [(0.0, 0, -1)]
        done: tuple[int, int] | None = None
        while heap:
            d, pos, last = heapq.heappop(heap)
            if d > dist.get((pos, last), float("inf")):
                continue
            if pos == L:
                done = (pos, last)
                break
            for j in used:
                a, e = placement.start[j], placement.end(j)
                if not (a <= pos < e) or j == last:
                    continue
                hop_s = (net.client_rtt_s[client, j] if last < 0 else net.server_rtt_s[last, j]) / 2 + ser
                for stop in cuts:
                    if pos < stop <= e:
                        k = stop - pos
                        cost = d + hop_s + k * per_block[j]
                        if view.free[j] < k:
                            cost += self.no_cache_penalty_s
                        if stop == L:
                            cost += net.client_rtt_s[client, j] / 2 + ser  # back to the client
                        if cost < dist.get((stop, j), float("inf")):
                            dist[(stop, j)] = cost
                            prev[(stop, j)] = (pos, last)
                            heapq.heappush(heap, (cost, stop, j))
        if done is None:
            hosted: set[int] = set()
            for j in used:
                hosted.update(range(placement.start[j], placement.end(j)))
            missing = [b for b in range(L) if b not in hosted]
            where = f"blocks {missing[0]}..{missing[-1]} ({len(missing)} of {L})" if missing else "no block"
            raise NoRouteError(f"client {net.clients[client]!r}: the PETALS swarm leaves {where} uncovered; "
                               "add servers or rebalance")
        hops = []
        state = done
        while state[1] >= 0:
            before = prev[state]
            hops.append(Hop(state[1], before[0], state[0]))
            state = before
        return Route(tuple(reversed(hops)))
