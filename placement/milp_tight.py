"""A tighter exact BPRR MILP: block-indexed flows aggregated per client, symmetry breaking, hop-count cuts."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix

from placement.base import Hop, InfeasiblePlacementError, Placement, Problem, Route
from placement.cg_bp import leftover_cache_slots
from placement.milp import MilpSolution, infeasible_error, request_clients
from placement.perf import hop_token_s, hostable_blocks
from placement.solver import MilpModel, relative_gap, solve_model


@dataclass(frozen=True)
class TightModel:
    """The model and the index maps needed to read a solution back (built by :func:`build_tight`)."""

    milp: MilpModel
    servers: tuple[int, ...]  # servers that can hold a block (the others host nothing)
    classes: tuple[int, ...]  # client of each request class
    sizes: tuple[int, ...]  # requests per class (n_c)
    num_blocks: int

    def h(self, j: int, b: int) -> int:
        """Column of h_jb (server index ``j`` among ``servers``, block b): j hosts block b."""
        return j * self.num_blocks + b

    def p(self, c: int, j: int, b: int) -> int:
        """Column of P^c_jb: how many class-c requests run block b on server j."""
        S, L = len(self.servers), self.num_blocks
        return 2 * S * L + (c * S + j) * L + b

    def g(self, c: int, j: int, b: int) -> int:
        """Column of G^c_jb: how many class-c requests enter server j at block b (start a hop there)."""
        S, L = len(self.servers), self.num_blocks
        return 2 * S * L + len(self.classes) * S * L + (c * S + j) * L + b


def min_hops(caps: list[int], num_blocks: int) -> int:
    """Fewest servers whose block counts can reach L: every route has at least this many hops."""
    total = 0
    for k, cap in enumerate(sorted(caps, reverse=True), start=1):
        total += cap
        if total >= num_blocks:
            return k
    return len(caps) + 1  # no route at all: the coverage rows make the model infeasible


def identical_runs(problem: Problem, servers: list[int]) -> list[list[int]]:
    """Groups (in index order) of servers the model cannot tell apart: same type and same RTT to every client."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for k, j in enumerate(servers):
        key = (problem.network.servers[j], tuple(np.round(problem.network.client_rtt_s[:, j], 12)))
        groups.setdefault(key, []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def build_tight(problem: Problem, clients: list[int], symmetry: bool = True, cuts: bool = True) -> TightModel:
    """The block-indexed BPRR model (exact for Sun et al. §III, see ``docs/placement.md``, "milp_tight").

    Per server j and block b a binary h_jb (j hosts b; hosted blocks are one contiguous window); per request
    class c (the requests of one client, n_c of them) integers P^c_jb ∈ [0, n_c] (requests running block b on j,
    Σ_j P^c_jb = n_c) and G^c_jb ≥ P^c_jb − P^c_j,b−1 (hops entering j at b). "A hop runs to the end of j's
    window" (Lemma 1, k_ij = a_j + m_j − a_i − m_i) is P^c_j,b+1 ≥ P^c_jb when j hosts b + 1. Objective
    Σ_c Σ_jb (t_cj G + τ_j P) = Σ_r Σ_hops (t_cj + τ_j k_j); memory s_m Σ_b h_jb + s_c Σ_cb P^c_jb ≤ M_j.
    Aggregating per client is exact: at each block boundary the requests leaving ended windows can be handed to
    the entering ones in any order. ``symmetry``: identical servers are ordered by (blocks desc, start asc);
    ``cuts``: every route has at least K_min hops and a hop on j runs at most j's largest window.
    """
    L = problem.num_blocks
    servers = [j for j in range(len(problem.network.servers)) if hostable_blocks(problem, j) > 0]
    count = Counter(clients)
    classes = sorted(count)
    sizes = [count[c] for c in classes]
    S, C = len(servers), len(classes)
    n_var = 2 * S * L + 2 * C * S * L  # h, s (window start), P, G
    model = TightModel(MilpModel(np.zeros(0), coo_matrix((0, 0)).tocsr(), np.zeros(0), np.zeros(0),
                                 np.zeros(0), np.zeros(0), np.zeros(0)),
                       tuple(servers), tuple(classes), tuple(sizes), L)

    def s(j: int, b: int) -> int:
        return S * L + j * L + b

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(terms: list[tuple[int, float]], lower: float, upper: float) -> None:
        row = len(lo)
        for col, v in terms:
            rows.append(row)
            cols.append(col)
            vals.append(v)
        lo.append(lower)
        hi.append(upper)

    h, p, g = model.h, model.p, model.g
    caps = [hostable_blocks(problem, j) for j in servers]
    serve_caps = [hostable_blocks(problem, j, sessions=1) for j in servers]
    cost = np.zeros(n_var)
    upper = np.ones(n_var)
    integrality = np.zeros(n_var)
    for k in range(S):
        for b in range(L):
            integrality[h(k, b)] = 1
            # Contiguity: a window starts where h rises; at most one start per server.
            add([(s(k, b), 1.0), (h(k, b), -1.0)] + ([(h(k, b - 1), 1.0)] if b else []), 0, np.inf)
        add([(s(k, b), 1.0) for b in range(L)], 0, 1)
        add([(h(k, b), 1.0) for b in range(L)], 0, caps[k])
        # Memory (§III): s_m m_j + s_c Σ_r k^r_j ≤ M_j.
        add([(h(k, b), problem.model.block_gb) for b in range(L)]
            + [(p(c, k, b), problem.cache_gb) for c in range(C) for b in range(L)], -np.inf,
            problem.usable_mem_gb(servers[k]))
    tau = [problem.network.servers[j].tau_s for j in servers]
    for c, (client, n) in enumerate(zip(classes, sizes, strict=True)):
        t_c = problem.network.client_rtt_s[client] + problem.overheads.per_token_s
        for b in range(L):
            add([(p(c, k, b), 1.0) for k in range(S)], n, n)
        for k in range(S):
            for b in range(L):
                upper[p(c, k, b)] = n
                upper[g(c, k, b)] = n
                integrality[p(c, k, b)] = 1
                cost[p(c, k, b)] = tau[k]
                cost[g(c, k, b)] = t_c[servers[k]]
                add([(p(c, k, b), 1.0), (h(k, b), -float(n))], -np.inf, 0)
                add([(g(c, k, b), 1.0), (p(c, k, b), -1.0)] + ([(p(c, k, b - 1), 1.0)] if b else []), 0, np.inf)
                if b + 1 < L:  # a hop runs to the end of the window (Lemma 1)
                    add([(p(c, k, b), 1.0), (p(c, k, b + 1), -1.0), (h(k, b + 1), float(n))], -np.inf, n)
            if cuts:  # a hop on j runs at most j's largest window that leaves room for a session (cap), so each
                # request running block b on j entered j at one of the blocks b − cap + 1 … b
                for b in range(L):
                    add([(p(c, k, b), 1.0)] + [(g(c, k, e), -1.0) for e in range(max(0, b - serve_caps[k] + 1), b + 1)],
                        -np.inf, 0)
        if cuts:  # every route needs at least K_min hops
            add([(g(c, k, b), 1.0) for k in range(S) for b in range(L)], n * min_hops(serve_caps, L), np.inf)
    if symmetry:
        for run in identical_runs(problem, servers):
            for k, k2 in itertools.pairwise(run):
                # m_k ≥ m_k2, and when equal, start_k ≤ start_k2 (Σ_b b·s_kb is the start of a used window).
                add([(h(k, b), 1.0) for b in range(L)] + [(h(k2, b), -1.0) for b in range(L)], 0, np.inf)
                add([(s(k, b), float(b)) for b in range(L)] + [(s(k2, b), -float(b)) for b in range(L)]
                    + [(h(k, b), -float(L)) for b in range(L)] + [(h(k2, b), float(L)) for b in range(L)],
                    -np.inf, 0)
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(lo), n_var)).tocsr()
    milp = MilpModel(cost, matrix, np.array(lo), np.array(hi), integrality, np.zeros(n_var), upper)
    return TightModel(milp, tuple(servers), tuple(classes), tuple(sizes), L)


def start_vector(model: TightModel, problem: Problem, placement: Placement, routes: list[Route]) -> np.ndarray:
    """A feasible point of ``model`` from a placement and one route per request (e.g. CG-BPRR's), for a warm start."""
    x = np.zeros(model.milp.cost.size)
    S, L = len(model.servers), model.num_blocks
    index = {j: k for k, j in enumerate(model.servers)}
    # The symmetry rows order identical servers by (blocks desc, start asc): relabel them into that order.
    for run in identical_runs(problem, list(model.servers)):
        members = [model.servers[k] for k in run]
        ranked = sorted(members, key=lambda j: (-placement.count[j], placement.start[j] if placement.count[j] else 0))
        index.update({j: index[members[i]] for i, j in enumerate(ranked)})
    for j, (a, m) in enumerate(zip(placement.start, placement.count, strict=True)):
        if m:
            k = index[j]
            x[[model.h(k, b) for b in range(a, a + m)]] = 1
            x[S * L + k * L + a] = 1
    cls = {c: i for i, c in enumerate(model.classes)}
    for client, route in zip(request_clients(problem), routes, strict=True):
        c = cls[client]
        for hop in route.hops:
            k = index[hop.server]
            x[model.g(c, k, hop.first)] += 1
            for b in range(hop.first, hop.last):
                x[model.p(c, k, b)] += 1
    return x


def read_solution(model: TightModel, problem: Problem, x: np.ndarray, clients: list[int],
                  policy: str) -> tuple[Placement, tuple[Route, ...]]:
    """Placement from h, keeping only the blocks some request runs (an optimum may host idle blocks at no cost:
    a server no request uses hosts nothing, and a window starts at its first entry; its end is where every hop on
    it ends); one route per request by following the per-client flows block by block."""
    n_servers, L = len(problem.network.servers), model.num_blocks
    start, count = [0] * n_servers, [0] * n_servers
    for k, j in enumerate(model.servers):
        hosted = [b for b in range(L) if x[model.h(k, b)] > 0.5]
        used = [b for b in hosted if any(x[model.p(c, k, b)] > 0.5 for c in range(len(model.classes)))]
        if used:
            start[j], count[j] = used[0], hosted[-1] + 1 - used[0]
    slots = [leftover_cache_slots(problem, j, count[j]) if count[j] else 0 for j in range(n_servers)]
    placement = Placement(tuple(start), tuple(count), tuple(slots), policy=policy)
    routes_by_class: dict[int, list[Route]] = {}
    for c, client in enumerate(model.classes):
        on: list[list[tuple[int, int]]] = [[] for _ in range(model.sizes[c])]  # per request: (server, first)
        where = [-1] * model.sizes[c]
        for b in range(L):
            want = {j: int(np.rint(x[model.p(c, k, b)])) for k, j in enumerate(model.servers)}
            free = []
            for r, j in enumerate(where):
                if j >= 0 and placement.end(j) > b:  # still inside its window: it stays (runs to the end)
                    want[j] -= 1
                else:
                    free.append(r)
            entering = [j for j, n in want.items() for _ in range(max(n, 0))]
            for r, j in zip(free, entering, strict=True):
                where[r] = j
                on[r].append((j, b))
        routes_by_class[client] = [Route(tuple(Hop(j, first, placement.end(j)) for j, first in hops)) for hops in on]
    routes = [routes_by_class[c].pop() for c in clients]
    return placement, tuple(routes)


def solve_tight(problem: Problem, clients: list[int], time_limit_s: float = 30.0, mip_rel_gap: float = 1e-4,
                warm_start: bool = True, symmetry: bool = True, cuts: bool = True,
                trace: list[tuple[float, float, float]] | None = None) -> MilpSolution:
    """Solve the block-indexed BPRR model with HiGHS; ``warm_start`` hands it CG-BPRR's solution when CG-BPRR
    finds one. ``trace`` (if given) receives (seconds, objective, dual bound) as HiGHS improves either."""
    model = build_tight(problem, clients, symmetry=symmetry, cuts=cuts)
    if not model.servers:  # no server can hold a block: nothing for HiGHS to search
        raise infeasible_error(problem, len(clients))
    start = None
    if warm_start:
        start = cg_bprr_start(model, problem, clients)
    res = solve_model(model.milp, time_limit_s, mip_rel_gap, start, trace)
    if res.x is None:
        if res.infeasible:
            raise infeasible_error(problem, len(clients))
        raise RuntimeError(f"MILP found no solution within {time_limit_s} s ({res.message})")
    placement, routes = read_solution(model, problem, res.x, clients, "milp_tight")
    objective = sum(hop_token_s(problem, c, h.server, h.blocks) for c, r in zip(clients, routes, strict=True)
                    for h in r.hops)
    # HiGHS's incumbent may carry slack hop counts (G above P's rise) that the routes read back do not pay, so the
    # gap is taken against the routes' own objective.
    gap = min(res.gap, relative_gap(objective, res.bound))
    return MilpSolution(placement, routes, float(objective), res.bound, gap, res.optimal, res.message)


def cg_bprr_start(model: TightModel, problem: Problem, clients: list[int]) -> np.ndarray | None:
    """CG-BPRR's placement and routes as a start vector (None when CG-BPRR finds no placement or clients differ)."""
    from placement.cg_bp import CgBpPlacement
    from placement.dag import dag_shortest_route, link_costs

    if clients != request_clients(problem):
        return None
    try:
        placement = CgBpPlacement().place(problem, np.random.default_rng(0))
    except InfeasiblePlacementError:
        return None
    routes = [dag_shortest_route(problem, placement, c, *link_costs(problem, c))[0] for c in clients]
    return start_vector(model, problem, placement, routes)


class MilpTightPlacement:
    """Exact placement for |R| design requests with the block-indexed model; ``time_limit_s`` caps HiGHS,
    ``mip_rel_gap`` is the relative gap at which it stops as optimal, ``warm_start`` seeds it with CG-BPRR."""

    def __init__(self, time_limit_s: float = 120.0, mip_rel_gap: float = 1e-4, warm_start: bool = True) -> None:
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s={time_limit_s} is invalid; allowed: > 0")
        if not 0 <= mip_rel_gap < 1:
            raise ValueError(f"mip_rel_gap={mip_rel_gap} is invalid; allowed: 0 <= gap < 1")
        self.time_limit_s, self.mip_rel_gap, self.warm_start = time_limit_s, mip_rel_gap, warm_start
        self.last: MilpSolution | None = None

    def place(self, problem: Problem, rng: np.random.Generator) -> Placement:
        """The optimal placement (its routes, objective, bound and gap stay in ``self.last``)."""
        self.last = solve_tight(problem, request_clients(problem), self.time_limit_s, self.mip_rel_gap,
                                self.warm_start)
        return self.last.placement
