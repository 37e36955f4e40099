"""CG-BPRR step 3 (Sun et al. §IV): per-client shortest path, link cost t_cj + τ_j·k_ij."""

from __future__ import annotations

from placement.base import Placement, Problem, Route, SlotView
from placement.dag import dag_shortest_route, link_costs


class ShortestPathRouter:
    """Offline routing: ignores the cache state (CG-BPRR reserved cache for |R| requests); waits when full."""

    waits_in_queue = True

    def __init__(self, allocation_delay_s: float = 0.0) -> None:
        if allocation_delay_s < 0:
            raise ValueError(f"allocation_delay_s={allocation_delay_s} is invalid; allowed: >= 0")
        self.allocation_delay_s = allocation_delay_s

    def route(self, problem: Problem, placement: Placement, client: int, view: SlotView) -> Route:
        """The minimum per-token-time chain for ``client``; NoRouteError if blocks are uncovered."""
        base, tau = link_costs(problem, client)
        return dag_shortest_route(problem, placement, client, base, tau)[0]
