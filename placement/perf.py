"""Performance model of Sun, He, Ji, Parag §III: feasibility, link/request times, memory, Theorem-2 bound."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from placement.base import Hop, InfeasiblePlacementError, Placement, Problem, Route


def link_feasible(prev_end: int, start_j: int, count_j: int) -> bool:
    """Lemma 1: link (i, j) is feasible iff a_j ≤ a_i + m_i ≤ a_j + m_j − 1 (a client has a + m ≡ block 0)."""
    return count_j >= 1 and start_j <= prev_end <= start_j + count_j - 1


def hop_token_s(problem: Problem, client: int, j: int, blocks: int) -> float:
    """Per-token time of a link: t_cj + τ_j·k_ij (§III), t_cj = RTT(c, j) + per-token overhead."""
    rtt = float(problem.network.client_rtt_s[client, j])
    return rtt + problem.overheads.per_token_s + problem.network.servers[j].tau_s * blocks


def hop_prefill_s(problem: Problem, client: int, j: int, blocks: int) -> float:
    """Prefill time of a link: t^I_cj + k_ij·τ^I_j, t^I_cj = RTT + 0.7049·l^I ms + 67 ms (§VI)."""
    o = problem.overheads
    rtt = float(problem.network.client_rtt_s[client, j])
    t_in = rtt + o.input_base_s + o.input_per_token_s * problem.input_tokens
    return t_in + problem.network.servers[j].tau_in_s(problem.input_tokens) * blocks


@dataclass(frozen=True)
class RouteTimes:
    """Times of one request on a route (no waiting): prefill, per-token decode and total service."""

    prefill_s: float
    decode_token_s: float
    service_s: float


def route_times(problem: Problem, client: int, route: Route) -> RouteTimes:
    """Request time: initial + Σ_j [t^I_cj + k_j τ^I_j] + (l_max − 1)·Σ_j [t_cj + k_j τ_j] (§III)."""
    prefill = sum(hop_prefill_s(problem, client, h.server, h.blocks) for h in route.hops)
    decode = sum(hop_token_s(problem, client, h.server, h.blocks) for h in route.hops)
    service = problem.overheads.initial_s + prefill + (problem.max_tokens - 1) * decode
    return RouteTimes(prefill, decode, service)


def check_route(problem: Problem, placement: Placement, route: Route) -> None:
    """Raise ValueError unless the route processes blocks 0..L-1 in order on servers that host them."""
    pos = 0
    for h in route.hops:
        a, m = placement.start[h.server], placement.count[h.server]
        if not (h.first == pos and a <= h.first < h.last <= a + m):
            raise ValueError(f"route {route.label()}: hop {h} infeasible at block {pos} "
                             f"(server hosts [{a}, {a + m}))")
        pos = h.last
    if pos != problem.num_blocks:
        raise ValueError(f"route {route.label()} ends at block {pos}, not L={problem.num_blocks}")


def chain_route(placement: Placement, servers: list[int]) -> Route:
    """The route through ``servers`` where each processes from the previous end to its own end (k_ij,
    §III)."""
    hops, pos = [], 0
    for j in servers:
        hops.append(Hop(j, pos, placement.end(j)))
        pos = placement.end(j)
    return Route(tuple(hops))


def memory_gb(problem: Problem, placement: Placement, block_sessions: list[int] | np.ndarray) -> np.ndarray:
    """Memory per server: s_m·m_j + s_c·Σ_r k^r_j (§III); ``block_sessions[j]`` = Σ_r k^r_j."""
    m = np.asarray(placement.count, dtype=float)
    return problem.model.block_gb * m + problem.cache_gb * np.asarray(block_sessions, dtype=float)


def amortized_block_s(problem: Problem, j: int, count: int) -> float:
    """t̃_j = (max_c t_cj + τ_j·m_j) / m_j (CG-BPRR step 2, §IV)."""
    t_max = float(problem.network.client_rtt_s[:, j].max()) + problem.overheads.per_token_s
    return (t_max + problem.network.servers[j].tau_s * count) / count


def theorem2_bound_s(problem: Problem, placement: Placement) -> float:
    """Theorem 2: per-token time ≤ Σ_{k≤K} t̃_(k) m_(k) − τ_(K)(Σ_{k≤K} m_(k) − L), servers sorted by t̃.

    K is the number of servers, in t̃ order, needed for Σ m ≥ L.
    """
    used = [j for j, m in enumerate(placement.count) if m > 0]
    used.sort(key=lambda j: amortized_block_s(problem, j, placement.count[j]))
    total, blocks = 0.0, 0
    for j in used:
        m = placement.count[j]
        total += amortized_block_s(problem, j, m) * m
        blocks += m
        if blocks >= problem.num_blocks:
            return total - problem.network.servers[j].tau_s * (blocks - problem.num_blocks)
    raise ValueError(f"placement hosts {blocks} blocks in total, fewer than L={problem.num_blocks}")


def hostable_blocks(problem: Problem, j: int, sessions: int = 0) -> int:
    """Most blocks server j can host with ``sessions`` block-sessions of cache (§III memory constraint):
    min(L, max_blocks, ⌊(M_j − s_c·sessions)/s_m⌋); 0 when M_j is below that (a server whose memory is under the
    runtime reserve hosts nothing)."""
    server = problem.network.servers[j]
    free = problem.usable_mem_gb(j) - problem.cache_gb * sessions
    if free <= 0:
        return 0
    top = problem.num_blocks if server.max_blocks is None else min(problem.num_blocks, server.max_blocks)
    return max(0, min(top, int(np.floor(free / problem.model.block_gb + 1e-9))))


def infeasible_placement(problem: Problem, detail: str, shortfall_blocks: int | None = None,
                         shortfall_gb: float | None = None) -> InfeasiblePlacementError:
    """InfeasiblePlacementError with the shortfall and the fix that can work.

    Defaults: blocks no server can hold even with one session on them, and the memory every placement needs at
    least (L·s_m + |R|·L·s_c) minus the servers' usable memory. When no server can hold a single block with one
    session, more servers of the same kinds or a lower |R| cannot help: the fix names the memory a server needs.
    """
    L, R = problem.num_blocks, problem.design_concurrency
    servers = range(len(problem.network.servers))
    if shortfall_blocks is None:
        shortfall_blocks = max(0, L - sum(hostable_blocks(problem, j, sessions=1) for j in servers))
    if shortfall_gb is None:
        have = sum(max(problem.usable_mem_gb(j), 0.0) for j in servers)
        shortfall_gb = max(0.0, L * problem.model.block_gb + R * L * problem.cache_gb - have)
    fix = None
    if all(hostable_blocks(problem, j, sessions=1) == 0 for j in servers):
        one = problem.model.block_gb + problem.cache_gb
        best = max(problem.network.servers, key=lambda s: s.mem_gb)
        fix = (f"no server can hold a single block: one block with one session needs s_m + s_c = {one:.3f} GB "
               f"plus the runtime reserve {problem.model.reserve_gb:.3f} GB, i.e. {one + problem.model.reserve_gb:.3f}"
               f" GB, and the largest server ({best.name}) has {best.mem_gb:.3f} GB; use servers with more memory "
               f"or a smaller block (fewer weight bits)")
    return InfeasiblePlacementError(shortfall_blocks, shortfall_gb, detail, fix)
