"""WS-RR (Sun et al. §V): online waiting-penalized shortest path over the feasible-link DAG."""

from __future__ import annotations

import numpy as np

from placement.base import Placement, Problem, Route, SlotView
from placement.dag import dag_shortest_route


def wait_until_free_s(free: int, releases: tuple[tuple[float, int], ...], need: int) -> float:
    """Seconds until ``need`` slots are free, given slots released by running sessions (sorted by time)."""
    if free >= need:
        return 0.0
    for at_s, slots in sorted(releases):
        free += slots
        if free >= need:
            return at_s
    return np.inf


class WsRrRouter:
    """Link cost = wait for k_ij cache slots on j + prefill + (l_max − 1)·decode time on the link; no
    admission
    control (the request then waits in the servers' queues)."""

    waits_in_queue = True

    def __init__(self, allocation_delay_s: float = 0.0) -> None:
        if allocation_delay_s < 0:
            raise ValueError(f"allocation_delay_s={allocation_delay_s} is invalid; allowed: >= 0")
        self.allocation_delay_s = allocation_delay_s

    def route(self, problem: Problem, placement: Placement, client: int, view: SlotView) -> Route:
        """Cheapest chain under the current cache state ``view``; NoRouteError if blocks are uncovered."""
        o, servers = problem.overheads, problem.network.servers
        rtt = problem.network.client_rtt_s[client]
        n_dec = problem.max_tokens - 1
        t_in = rtt + o.input_base_s + o.input_per_token_s * problem.input_tokens
        base = t_in + n_dec * (rtt + o.per_token_s)
        per_block = np.array([s.tau_in_s(problem.input_tokens) + n_dec * s.tau_s for s in servers])
        free = np.asarray(view.free)

        def waiting(cand: np.ndarray, k: np.ndarray) -> np.ndarray:
            out = np.zeros(len(cand))
            for i in np.nonzero(free[cand] < k)[0]:
                j = int(cand[i])
                out[i] = wait_until_free_s(int(free[j]), view.releases[j], int(k[i]))
            return out

        return dag_shortest_route(problem, placement, client, base, per_block, waiting)[0]
