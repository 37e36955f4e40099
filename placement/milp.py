"""The exact BPRR MILP (Sun, He, Ji, Parag §III-B) with scipy.optimize.milp (HiGHS) and a time limit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix

from placement.base import Hop, InfeasiblePlacementError, Placement, Problem, Route
from placement.cg_bp import leftover_cache_slots
from placement.perf import hostable_blocks, infeasible_placement
from placement.solver import MilpModel, solve_model


@dataclass(frozen=True)
class MilpSolution:
    """Placement, one route per request, objective (Σ_r per-token time, s), dual bound, gap, status."""

    placement: Placement
    routes: tuple[Route, ...]
    objective_s: float
    bound_s: float
    gap: float
    optimal: bool
    status: str


def request_clients(problem: Problem) -> list[int]:
    """The |R| design requests, spread round-robin over the network's clients."""
    n = len(problem.network.clients)
    return [r % n for r in range(problem.design_concurrency)]


def infeasible_error(problem: Problem, num_requests: int) -> InfeasiblePlacementError:
    """The MILP proved that no placement serves the requests: the error with the shortfall and the right fix."""
    detail = f"the MILP proved that no placement serves all {num_requests} request(s)"
    err = infeasible_placement(problem, detail)
    if err.shortfall_blocks == 0 and err.shortfall_gb == 0:
        err = infeasible_placement(problem, detail + " (memory suffices in total, but not once split into "
                                   "contiguous windows, max_blocks and per-server cache)")
    return err


def solve_bprr(problem: Problem, clients: list[int], time_limit_s: float = 30.0, mip_rel_gap: float = 1e-4,
               trace: list[tuple[float, float, float]] | None = None) -> MilpSolution:
    """Minimize Σ_r Σ_(i,j) [t_{c_r j} f^r_ij + τ_j k^r_ij] (the paper's objective / l_max).

    Variables: a_j, m_j (integers), f^r_ij (binary, i ∈ client ∪ S, j ∈ S ∪ end) and w^r_ij ≥ k_ij − M(1 − f)
    (w replaces the McCormick products α−β+γ−δ of §III-B: minimization keeps it at f·k_ij). Constraints:
    a_j + m_j ≤ L, flow conservation, Lemma 1 on every used link (big-M, M = L + 1), memory
    s_m m_j + s_c Σ_r k^r_j ≤ M_j. Block ends strictly increase along links, so no cycles can appear.
    """
    S, L, nr = len(problem.network.servers), problem.num_blocks, len(clients)
    big = L + 1
    src, sink = S, S + 1  # pseudo-nodes: the client before block 0, the end after block L
    links = [(i, j) for i in [src, *range(S)] for j in [*range(S), sink]
             if i != j and not (i == src and j == sink)]
    nl = len(links)
    n_var = 2 * S + nr * nl * 2  # a, m, then per request: f (nl), w (nl)

    def a(j: int) -> int:
        return j

    def m(j: int) -> int:
        return S + j

    def f(r: int, li: int) -> int:
        return 2 * S + r * 2 * nl + li

    def w(r: int, li: int) -> int:
        return 2 * S + r * 2 * nl + nl + li

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(terms: dict[int, float], lower: float, upper: float) -> None:
        row = len(lo)
        for c, v in terms.items():
            rows.append(row)
            cols.append(c)
            vals.append(v)
        lo.append(lower)
        hi.append(upper)

    def end_terms(i: int, sign: float) -> dict[int, float]:
        return {} if i == src else {a(i): sign, m(i): sign}

    for j in range(S):
        add({a(j): 1, m(j): 1}, -np.inf, L)
    tau = np.array([s.tau_s for s in problem.network.servers])
    cost = np.zeros(n_var)
    for r, c in enumerate(clients):
        t_c = problem.network.client_rtt_s[c] + problem.overheads.per_token_s
        out_src = {f(r, li): 1.0 for li, (i, _) in enumerate(links) if i == src}
        add(out_src, 1, 1)
        add({f(r, li): 1.0 for li, (_, j) in enumerate(links) if j == sink}, 1, 1)
        for k in range(S):
            terms = {f(r, li): 1.0 for li, (_, j) in enumerate(links) if j == k}
            terms.update({f(r, li): -1.0 for li, (i, _) in enumerate(links) if i == k})
            add(terms, 0, 0)
        for li, (i, j) in enumerate(links):
            if j == sink:  # Lemma 1 at the end: a_i + m_i = L (≥ L with a_i + m_i ≤ L)
                add({**end_terms(i, -1.0), f(r, li): big}, -np.inf, big - L)
                continue
            # a_j ≤ a_i + m_i  and  a_i + m_i ≤ a_j + m_j − 1 when f = 1 (Lemma 1)
            add({a(j): 1.0, **end_terms(i, -1.0), f(r, li): big}, -np.inf, big)
            add({**end_terms(i, 1.0), a(j): -1.0, m(j): -1.0, f(r, li): big}, -np.inf, big - 1)
            # w ≥ k_ij − M(1 − f), k_ij = a_j + m_j − a_i − m_i
            add({a(j): 1.0, m(j): 1.0, **end_terms(i, -1.0), f(r, li): big, w(r, li): -1.0}, -np.inf, big)
            cost[f(r, li)] = t_c[j]
            cost[w(r, li)] = tau[j]
    for j in range(S):
        terms = {m(j): problem.model.block_gb}
        for r in range(nr):
            terms.update({w(r, li): problem.cache_gb for li, (_, k) in enumerate(links) if k == j})
        # A server whose memory is below the runtime reserve hosts nothing (m_j ≤ 0 below), so its row must
        # not go negative: M_j⁺.
        add(terms, -np.inf, max(problem.usable_mem_gb(j), 0.0))

    integrality = np.zeros(n_var)
    integrality[: 2 * S] = 1
    upper = np.full(n_var, np.inf)
    for j in range(S):
        upper[a(j)] = L - 1
        upper[m(j)] = hostable_blocks(problem, j)
    for r in range(nr):
        for li in range(nl):
            integrality[f(r, li)] = 1
            upper[f(r, li)] = 1
            upper[w(r, li)] = L
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(lo), n_var)).tocsr()
    model = MilpModel(cost, matrix, np.array(lo), np.array(hi), integrality, np.zeros(n_var), upper)
    res = solve_model(model, time_limit_s, mip_rel_gap, trace=trace)
    if res.x is None:
        if res.infeasible:
            raise infeasible_error(problem, nr)
        raise RuntimeError(f"MILP found no solution within {time_limit_s} s ({res.message})")
    x = np.round(res.x).astype(int)
    count = [int(x[m(j)]) for j in range(S)]
    start = [int(x[a(j)]) if count[j] else 0 for j in range(S)]
    slots = [leftover_cache_slots(problem, j, count[j]) if count[j] else 0 for j in range(S)]
    placement = Placement(tuple(start), tuple(count), tuple(slots), policy="milp")
    routes = []
    for r in range(nr):
        nxt = {i: j for li, (i, j) in enumerate(links) if x[f(r, li)] == 1}
        hops, node, pos = [], nxt[src], 0
        while node != sink:
            hops.append(Hop(node, pos, placement.end(node)))
            pos, node = placement.end(node), nxt[node]
        routes.append(Route(tuple(hops)))
    return MilpSolution(placement, tuple(routes), res.objective, res.bound, res.gap, res.optimal, res.message)


class MilpPlacement:
    """Exact placement for |R| design requests (round-robin over clients); ``time_limit_s`` caps HiGHS."""

    def __init__(self, time_limit_s: float = 30.0) -> None:
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s={time_limit_s} is invalid; allowed: > 0")
        self.time_limit_s = time_limit_s
        self.last: MilpSolution | None = None

    def place(self, problem: Problem, rng: np.random.Generator) -> Placement:
        """The MILP's placement (its routes, objective, bound and gap stay in ``self.last``)."""
        self.last = solve_bprr(problem, request_clients(problem), self.time_limit_s)
        return self.last.placement
