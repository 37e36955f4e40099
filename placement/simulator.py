"""Online simulator (SimPy): Poisson arrivals, per-server cache slots, waiting or PETALS retry backoff.

Opt-in (``compute=ServerCompute(...)``): a server's compute as a ``simpy.Resource`` of bounded capacity, so
hops of concurrent sessions queue for a busy server. Off by default (the paper's model: every session computes
as if alone), and then the results are those of the model without it, exactly.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from placement.base import Placement, Problem, Route, Router, SlotView
from placement.perf import check_route, hop_prefill_s, hop_token_s, route_times

REQUEST_COLUMNS = ("request_id", "client", "arrival_s", "path", "hops", "attempts", "wait_s",
                   "allocation_delay_s", "ttft_s", "per_token_s", "decode_token_s", "service_s",
                   "completion_s")


@dataclass(frozen=True)
class Event:
    """One simulator event: time, kind (arrive/retry/start/compute/done), request and detail.

    ``compute`` (only with a bounded ``ServerCompute``): a hop got server ``server``'s compute after waiting
    ``wait_s`` for it.
    """

    time_s: float
    kind: str
    request_id: int
    detail: str = ""
    server: int = -1
    wait_s: float = 0.0


@dataclass(frozen=True)
class ServerCompute:
    """Per server: how many hops it computes at once (``None`` or 0: unlimited, the paper's model) and the share
    of a hop's k·τ that occupies the compute (1: all of it; an emulated slower device that sleeps the rest, as
    ``placement.real.server`` does, holds the compute only for its real-compute share 1/slowdown)."""

    capacity: tuple[int | None, ...]
    busy_share: tuple[float, ...] = field(default=())
    # The part of a decode / prefill hop's fixed overhead that is server compute (a real server's per-call
    # intercept), per server: it occupies the compute too. Taken out of the hop's latency, not added, so a hop
    # that does not queue takes the time it takes without the compute model.
    fixed_busy_s: tuple[float, ...] = field(default=())
    prefill_fixed_busy_s: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        for c in self.capacity:
            if c is not None and c < 0:
                raise ValueError(f"ServerCompute.capacity={self.capacity} is invalid; allowed: None, 0 "
                                 "(unlimited) or an integer >= 1 per server")
        if self.busy_share and len(self.busy_share) != len(self.capacity):
            raise ValueError(f"ServerCompute: {len(self.busy_share)} busy shares for {len(self.capacity)} "
                             "servers; allowed: one per server, or none (all 1)")
        if any(not 0 < b <= 1 for b in self.busy_share):
            raise ValueError(f"ServerCompute.busy_share={self.busy_share} is invalid; allowed: 0 < share <= 1")
        for name in ("fixed_busy_s", "prefill_fixed_busy_s"):
            v = getattr(self, name)
            if v and (len(v) != len(self.capacity) or min(v) < 0):
                raise ValueError(f"ServerCompute.{name}={v} is invalid; allowed: none, or one value >= 0 per "
                                 "server")

    @property
    def bounded(self) -> bool:
        return any(self.capacity)

    def share(self, j: int) -> float:
        return self.busy_share[j] if self.busy_share else 1.0

    def fixed(self, j: int, prefill: bool) -> float:
        v = self.prefill_fixed_busy_s if prefill else self.fixed_busy_s
        return v[j] if v else 0.0


def poisson_arrivals(rng: np.random.Generator, rate_per_s: float, num_requests: int,
                     clients: list[int]) -> list[tuple[float, int]]:
    """Each client sends a Poisson stream at ``rate_per_s``; the first ``num_requests`` of the merge, by
    time."""
    if rate_per_s <= 0:
        raise ValueError(f"arrival_rate_per_s={rate_per_s} is invalid; allowed: > 0")
    if num_requests < 1 or not clients:
        raise ValueError(f"num_requests={num_requests}, clients={clients}: need >= 1 request and >= 1 client")
    out: list[tuple[float, int]] = []
    for c in clients:
        times = np.cumsum(rng.exponential(1.0 / rate_per_s, size=num_requests))
        out.extend((float(t), c) for t in times)
    out.sort()
    return out[:num_requests]


class _State:
    """Live cache state: SimPy containers plus the release times of running sessions (for SlotView)."""

    def __init__(self, env: simpy.Environment, placement: Placement) -> None:
        self.env = env
        self.pools = [simpy.Container(env, capacity=max(s, 1), init=s) for s in placement.cache_slots]
        self.running: list[dict[int, tuple[float, int]]] = [{} for _ in placement.cache_slots]
        self.active = 0
        self.max_active = 0

    def view(self) -> SlotView:
        now = self.env.now
        return SlotView(tuple(int(p.level) for p in self.pools),
                        tuple(tuple((t - now, k) for t, k in r.values()) for r in self.running))


def _hop(env: simpy.Environment, compute: simpy.Resource | None, share: float, latency_s: float,
         work_s: float, rid: int, j: int, log: list[Event], waits: list[float]) -> Generator[simpy.Event, Any, None]:
    """One client → server → client hop: half the latency, the compute (queued for a bounded server), the rest."""
    yield env.timeout(latency_s / 2)
    if compute is None:
        yield env.timeout(work_s)
    else:
        with compute.request() as req:
            asked = env.now
            yield req
            waits.append(env.now - asked)
            log.append(Event(env.now, "compute", rid, f"server {j}", server=j, wait_s=env.now - asked))
            yield env.timeout(work_s * share)
        yield env.timeout(work_s * (1 - share))
    yield env.timeout(latency_s / 2)


def _contended(env: simpy.Environment, problem: Problem, client: int, route: Route,
               servers: list[simpy.Resource | None], compute: ServerCompute, rid: int, log: list[Event],
               waits: list[float], first_token: list[float]) -> Generator[simpy.Event, Any, None]:
    """The request's service hop by hop: initial, prefill hops, then l_max − 1 decode steps (as route_times)."""
    yield env.timeout(problem.overheads.initial_s)
    for step in range(problem.max_tokens):
        for h in route.hops:
            j = h.server
            t = problem.network.servers[j]
            if step == 0:
                work = t.tau_in_s(problem.input_tokens) * h.blocks
                latency = hop_prefill_s(problem, client, j, h.blocks) - work
            else:
                work = t.tau_s * h.blocks
                latency = hop_token_s(problem, client, j, h.blocks) - work
            fixed = min(compute.fixed(j, step == 0), latency)
            work, latency = work + fixed, latency - fixed
            yield from _hop(env, servers[j], compute.share(j), latency, work, rid, j, log, waits)
        if step == 0:
            first_token.append(env.now)


def _needs(route: Route) -> dict[int, int]:
    need: dict[int, int] = {}
    for h in route.hops:
        need[h.server] = need.get(h.server, 0) + h.blocks
    return need


def simulate(problem: Problem, placement: Placement, router: Router, arrivals: list[tuple[float, int]],
             compute: ServerCompute | None = None) -> tuple[list[dict[str, Any]], list[Event]]:
    """Run every arrival to completion; return one row per request (REQUEST_COLUMNS) and the event log.

    A request routes on arrival; a queueing router (WS-RR, shortest path) then waits for its cache slots
    (taken in server order, so no deadlock); PETALS re-routes after min(2^(n−1), 60) s while any hop
    lacks cache. With a bounded ``compute`` the service runs hop by hop and each hop waits for its server's
    compute (rows then add ``compute_wait_s``, the request's total wait for compute, and ``service_s`` is the
    measured service); the routers still see release times estimated without contention.
    """
    env = simpy.Environment()
    state = _State(env, placement)
    n = len(placement.cache_slots)
    if compute is not None and len(compute.capacity) != n:
        raise ValueError(f"ServerCompute has {len(compute.capacity)} capacities for {n} servers; allowed: one "
                         "per server")
    bounded = compute is not None and compute.bounded
    servers = [simpy.Resource(env, capacity=c) if c else None for c in compute.capacity] if compute else []
    rows: list[dict[str, Any]] = []
    log: list[Event] = []

    def request(rid: int, arrival_s: float, client: int) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(arrival_s - env.now)
        log.append(Event(env.now, "arrive", rid, problem.network.clients[client]))
        if router.allocation_delay_s > 0:  # the authors' fixed per-request delay: pure latency, holds nothing
            yield env.timeout(router.allocation_delay_s)
        ready_s = env.now
        attempt = 0
        while True:
            attempt += 1
            route = router.route(problem, placement, client, state.view())
            check_route(problem, placement, route)
            need = _needs(route)
            for j in sorted(need):  # checked before waiting: such a request would wait (or retry) forever
                if need[j] > placement.cache_slots[j]:
                    raise ValueError(f"route {route.label()} needs {need[j]} cache slots on server {j}, which "
                                     f"has {placement.cache_slots[j]}; fix: give the placement more cache "
                                     "(lower blocks per server) or use a router that avoids full servers")
            if router.waits_in_queue or all(state.pools[j].level >= k for j, k in need.items()):
                break
            delay = router.retry_after_s(attempt)  # type: ignore[attr-defined]
            log.append(Event(env.now, "retry", rid, f"attempt {attempt}, backoff {delay:g} s"))
            yield env.timeout(delay)
        for j in sorted(need):
            yield state.pools[j].get(need[j])
        start_s = env.now
        times = route_times(problem, client, route)
        service_s = times.service_s
        for j, k in need.items():
            state.running[j][rid] = (start_s + service_s, k)
        state.active += 1
        state.max_active = max(state.max_active, state.active)
        log.append(Event(env.now, "start", rid, route.label()))
        ttft = start_s - arrival_s + problem.overheads.initial_s + times.prefill_s
        extra: dict[str, float] = {}
        if bounded:
            assert compute is not None
            waits: list[float] = []
            first: list[float] = []
            yield from _contended(env, problem, client, route, servers, compute, rid, log, waits, first)
            ttft, service_s = first[0] - arrival_s, env.now - start_s
            extra["compute_wait_s"] = float(sum(waits))
        else:
            yield env.timeout(service_s)
        for j, k in need.items():
            del state.running[j][rid]
            yield state.pools[j].put(k)
        state.active -= 1
        log.append(Event(env.now, "done", rid))
        rows.append({"request_id": rid, "client": problem.network.clients[client], "arrival_s": arrival_s,
                     "path": route.label(), "hops": len(route.hops), "attempts": attempt,
                     "wait_s": start_s - ready_s,
                     "allocation_delay_s": ready_s - arrival_s, "ttft_s": ttft,
                     "per_token_s": (env.now - arrival_s) / problem.max_tokens,
                     "decode_token_s": times.decode_token_s, "service_s": service_s, "completion_s": env.now,
                     **extra})

    for rid, (t, c) in enumerate(arrivals):
        env.process(request(rid, t, c))
    env.run()
    if len(rows) != len(arrivals):
        raise RuntimeError(f"simulation ended with {len(arrivals) - len(rows)} request(s) stuck waiting "
                           "for cache")
    rows.sort(key=lambda r: r["request_id"])
    log.sort(key=lambda e: (e.time_s, e.request_id))
    return rows, log
