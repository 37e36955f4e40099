"""The chain's client: embeds, asks the routing policy for a route over live servers, relays hop by hop.

Client-centric relaying (Sun et al. §III, PETALS): every hop goes client → server → client, so the client
holds each hop's inputs and can replay them to a replacement when a server dies mid-session.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from placement.base import Hop, Placement, Problem, Route, Router, SlotView
from placement.perf import check_route, route_times
from placement.real.blocks import ClientParts
from placement.real.hosting import Host, ServerDiedError

HOP_COLUMNS = ("request_id", "step", "hop", "server", "first", "last", "tokens", "rtt_s", "busy_s", "hop_s",
               "replay", "call_start_s", "call_end_s")


class AllServersGoneError(RuntimeError):
    """No live server hosts some block any more: the session cannot complete."""


@dataclass
class SessionResult:
    """One request through the chain: tokens, times (from arrival) and every hop's record."""

    request_id: int
    tokens: list[int]
    ttft_s: float
    service_s: float
    wait_s: float
    attempts: int
    path: str
    reroutes: int
    hops: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Leg:
    """A hop of the current route with its session id and the inputs sent so far (for replay)."""

    hop: Hop
    sid: str
    inputs: list[torch.Tensor] = field(default_factory=list)


class ChainClient:
    """Shared by every session of one client (it tracks its running sessions for WS-RR's release view)."""

    def __init__(self, parts: ClientParts, problem: Problem, placement: Placement, router: Router,
                 hosts: dict[int, Host], client: int = 0, sleep: Callable[[float], None] = time.sleep,
                 wait_timeout_s: float = 600.0) -> None:
        self.parts, self.problem, self.placement, self.router = parts, problem, placement, router
        self.hosts, self.client, self.sleep = hosts, client, sleep
        self.wait_timeout_s = wait_timeout_s
        self.dead: set[int] = set()
        self._lock = threading.Lock()
        self._running: dict[str, tuple[float, dict[int, int]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(hosts)), thread_name_prefix="chain-view")

    def close(self) -> None:
        """Stop the client's helper threads (its sessions are closed as they finish)."""
        self._pool.shutdown(wait=True)

    def running_servers(self) -> list[dict[int, int]]:
        """Per running session, the servers it holds cache slots on (server → slots)."""
        with self._lock:
            return [dict(need) for _, need in self._running.values()]

    # ---- routing view -------------------------------------------------------------------------------
    def live_placement(self) -> Placement:
        """The placement without dead servers (count 0), what the router sees."""
        count = tuple(0 if j in self.dead else m for j, m in enumerate(self.placement.count))
        return replace(self.placement, count=count)

    def view(self) -> SlotView:
        """Free slots as the live servers report them; releases from this client's running sessions."""
        n = len(self.placement.count)
        free = [0] * n

        def ask(j: int) -> None:
            try:
                free[j] = int(self.hosts[j].call("info")["free_slots"])
            except ServerDiedError:
                self.dead.add(j)

        # One round trip for all servers, not one per server (the client asks on every allocation).
        list(self._pool.map(ask, [j for j in self.hosts if j not in self.dead]))
        now = time.monotonic()
        with self._lock:
            releases: list[list[tuple[float, int]]] = [[] for _ in range(n)]
            for end, need in self._running.values():
                for j, k in need.items():
                    releases[j].append((max(end - now, 0.0), k))
        return SlotView(tuple(free), tuple(tuple(sorted(r)) for r in releases))

    def _route(self, first: int, last: int) -> Route:
        """A route for blocks first..last-1 over the live servers, from the configured router."""
        live = self.live_placement()
        if first == 0 and last == self.problem.num_blocks:
            route = self.router.route(self.problem, live, self.client, self.view())
            check_route(self.problem, live, route)
            return route
        # Sub-chain (a replacement for a dead hop): the same router on the blocks first..last-1 only.
        starts, counts = [], []
        for a, m in zip(live.start, live.count, strict=True):
            lo, hi = max(a, first), min(a + m, last)
            starts.append(lo - first if hi > lo else 0)
            counts.append(hi - lo if hi > lo else 0)
        sub = replace(self.problem, model=replace(self.problem.model, num_blocks=last - first))
        sub_place = replace(live, start=tuple(starts), count=tuple(counts))
        route = self.router.route(sub, sub_place, self.client, self.view())
        return Route(tuple(Hop(h.server, h.first + first, h.last + first) for h in route.hops))

    # ---- allocation -----------------------------------------------------------------------------------
    def _open(self, route: Route, tag: str) -> list[_Leg] | None:
        """Reserve slots on every hop in server order (no deadlock); None when a non-waiting router is refused."""
        legs = [_Leg(h, f"{tag}:{i}:{uuid.uuid4().hex[:8]}") for i, h in enumerate(route.hops)]
        wait_s = self.wait_timeout_s if self.router.waits_in_queue else 0.0
        opened: list[_Leg] = []
        try:
            for leg in sorted(legs, key=lambda leg: leg.hop.server):
                if not self.hosts[leg.hop.server].call("open_session", leg.sid, leg.hop.first, leg.hop.last, wait_s):
                    self._close(opened)
                    return None
                opened.append(leg)
        except ServerDiedError:
            self._close(opened)
            raise
        return legs

    def _close(self, legs: list[_Leg]) -> None:
        for leg in legs:
            if leg.hop.server not in self.dead:
                try:
                    self.hosts[leg.hop.server].call("close_session", leg.sid)
                except ServerDiedError:
                    self.dead.add(leg.hop.server)

    def _allocate(self, first: int, last: int, tag: str) -> tuple[list[_Leg], int]:
        """Route and reserve, backing off after refusals as PETALS does (min(2^(n−1), cap) s); re-route if a
        server died meanwhile."""
        attempt = 0
        while True:
            attempt += 1
            route = self._route(first, last)
            try:
                legs = self._open(route, tag)
            except ServerDiedError:
                self.dead.update(h.server for h in route.hops if self._is_dead(h.server))
                continue
            if legs is not None:
                return legs, attempt
            self.sleep(self.router.retry_after_s(attempt))  # type: ignore[attr-defined]

    def _is_dead(self, j: int) -> bool:
        try:
            self.hosts[j].call("ping")
            return False
        except ServerDiedError:
            return True

    # ---- relaying -------------------------------------------------------------------------------------
    def _relay(self, leg: _Leg, hidden: torch.Tensor, positions: torch.Tensor, rid: int, step: int, index: int,
               records: list[dict[str, Any]], replay: bool = False) -> torch.Tensor:
        """One hop: client → server → client, the emulated RTT split around the call."""
        j = leg.hop.server
        rtt = float(self.problem.network.client_rtt_s[self.client, j])
        t0 = time.perf_counter()
        self.sleep(rtt / 2)
        call_start = time.perf_counter()
        out, busy_s = self.hosts[j].call("forward", leg.sid, hidden, positions)
        call_end = time.perf_counter()
        self.sleep(rtt / 2)
        records.append({"request_id": rid, "step": step, "hop": index, "server": j, "first": leg.hop.first,
                        "last": leg.hop.last, "tokens": int(hidden.shape[1]), "rtt_s": rtt, "busy_s": busy_s,
                        "hop_s": time.perf_counter() - t0, "replay": replay,
                        "call_start_s": call_start, "call_end_s": call_end})  # perf_counter: one clock per run
        return out

    def _replace(self, legs: list[_Leg], i: int, rid: int, step: int, records: list[dict[str, Any]]
                 ) -> tuple[list[_Leg], torch.Tensor]:
        """Leg i's server died: route its blocks over live servers, replay its cached inputs, splice the route."""
        dead = legs[i]
        self.dead.add(dead.hop.server)
        if not any(m > 0 for m in self.live_placement().count):
            raise AllServersGoneError("every server is dead")
        new, _ = self._allocate(dead.hop.first, dead.hop.last, f"{rid}r")
        hidden = torch.cat(dead.inputs, dim=1)
        positions = torch.arange(hidden.shape[1]).unsqueeze(0)
        for k, leg in enumerate(new):
            leg.inputs.append(hidden)
            hidden = self._relay(leg, hidden, positions, rid, step, i + k, records, replay=True)
        tail = dead.inputs[-1].shape[1]
        return legs[:i] + new + legs[i + 1:], hidden[:, -tail:]

    def _step(self, legs: list[_Leg], hidden: torch.Tensor, positions: torch.Tensor, rid: int, step: int,
              records: list[dict[str, Any]]) -> tuple[list[_Leg], torch.Tensor, int]:
        i, reroutes = 0, 0
        while i < len(legs):
            leg = legs[i]
            leg.inputs.append(hidden)
            try:
                hidden = self._relay(leg, hidden, positions, rid, step, i, records)
                i += 1
            except ServerDiedError:
                before = len(legs)
                legs, hidden = self._replace(legs, i, rid, step, records)
                i += len(legs) - before + 1
                reroutes += 1
        return legs, hidden, reroutes

    def generate(self, rid: int, prompt: list[int], max_tokens: int, arrival: float | None = None,
                 after_token: Callable[[int], None] | None = None) -> SessionResult:
        """Prefill ``prompt`` then decode: ``max_tokens`` greedy tokens in all (the first from the prefill)."""
        arrival = time.perf_counter() if arrival is None else arrival
        tag = str(rid)
        legs, attempts = self._allocate(0, self.problem.num_blocks, tag)
        start = time.perf_counter()
        route = Route(tuple(leg.hop for leg in legs))
        need: dict[int, int] = {}
        for h in route.hops:
            need[h.server] = need.get(h.server, 0) + h.blocks
        with self._lock:  # predicted release of this session's slots, for WS-RR's waiting estimate
            self._running[tag] = (time.monotonic() + route_times(self.problem, self.client, route).service_s, need)
        records: list[dict[str, Any]] = []
        tokens: list[int] = []
        reroutes = 0
        ids = torch.tensor([prompt])
        pos = 0
        ttft = 0.0
        try:
            for step in range(max_tokens):
                positions = torch.arange(pos, pos + ids.shape[1]).unsqueeze(0)
                hidden = self.parts.embed(ids, positions)
                legs, hidden, r = self._step(legs, hidden, positions, rid, step, records)
                reroutes += r
                tokens.append(self.parts.next_token(hidden))
                if step == 0:
                    ttft = time.perf_counter() - arrival
                pos += ids.shape[1]
                ids = torch.tensor([[tokens[-1]]])
                if after_token is not None:
                    after_token(step)
        finally:
            with self._lock:
                self._running.pop(tag, None)
            self._close(legs)
        end = time.perf_counter()
        return SessionResult(rid, tokens, ttft, end - start, start - arrival, attempts, route.label(), reroutes,
                             records)
