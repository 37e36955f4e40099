"""Mutable simulator state: servers with GPUs, checkpoint tiers (LRU) and loading queues, and model
instances."""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from schedulers.base import InstanceView, ModelInfo, Placement, ServerView, Tier
from schedulers.cluster import Cluster
from schedulers.errors import SimulatorInvariantError


class Instance:
    """One model instance on a server: pending (gathering GPUs), loading, busy (decoding a request) or
    idle."""

    __slots__ = (
        "abort",
        "acquired_s",
        "decision",
        "done_s",
        "first_token_s",
        "gpus",
        "handoff_to",
        "have",
        "id",
        "idle_since",
        "info",
        "loading_started",
        "migrating_to",
        "migration_src",
        "prewarm_keep_s",
        "prompt_tokens",
        "request",
        "server",
        "state",
        "version",
    )

    def __init__(self, iid: int, info: ModelInfo, server: Server, now: float) -> None:
        self.id = iid
        self.info = info
        self.server = server
        self.gpus = info.gpus
        self.have = (
            0  # GPUs gathered so far (a pending instance waits for migrations/preemptions to hand theirs)
        )
        self.state = "pending"
        self.request = -1
        self.prompt_tokens = 0
        self.decision: Placement | None = None
        self.version = 0  # bumped to invalidate scheduled completion/expiry events
        self.acquired_s = now
        self.idle_since = now
        self.first_token_s = 0.0
        self.done_s = 0.0
        self.handoff_to: Instance | None = None  # pending instance that receives our GPUs when we stop
        self.migrating_to: Instance | None = None
        self.migration_src: Instance | None = None
        self.abort = False  # migration target whose source finished first: become idle when loaded
        self.loading_started = False
        self.prewarm_keep_s: float | None = None


@dataclass
class LoadJob:
    """A queued load: the instance, the tier to read, its rate caps, and the estimated duration (runtime start-up
    included)."""

    instance: Instance
    tier: Tier
    loader_gbps: float | None
    download_then_load: bool
    est_s: float
    cache_to: tuple[Tier, ...] = ("dram", "ssd")
    upgrade: bool = True  # may switch to a faster local copy when it starts (the policy's tier_upgrade)
    slot: int = 0  # the loading slot whose estimated free time ``est_s`` was added to
    startup_s: float = 0.0  # runtime start-up it paid once it had its slot (set when the load starts)


class TierStore:
    """A capacity-bounded checkpoint tier (DRAM or SSD) with LRU order; checkpoints being read are pinned."""

    def __init__(self, name: str, capacity_bytes: int) -> None:
        self.name = name
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.items: OrderedDict[str, int] = OrderedDict()
        self.pinned: dict[str, int] = {}
        self._names: frozenset[str] | None = frozenset()

    def names(self) -> frozenset[str]:
        """The checkpoints held, as the frozen set a ``ServerView`` carries (cached until membership
        changes: rebuilding it on every view was a large share of a 1M-request run)."""
        if self._names is None:
            self._names = frozenset(self.items)
        return self._names

    def __contains__(self, model: object) -> bool:
        return model in self.items

    def discard(self, model: str) -> None:
        """Forget ``model`` if held (the real controller, when a load must not be served from this tier)."""
        self.items.pop(model, None)
        self.used_bytes = sum(self.items.values())
        self._names = None

    def touch(self, model: str) -> None:
        if model in self.items:
            self.items.move_to_end(model)

    def insert(self, model: str, nbytes: int) -> list[str] | None:
        """Add ``model``, evicting unpinned LRU entries; returns the evicted names, or None if it cannot
        fit."""
        if model in self.items:
            self.items.move_to_end(model)
            return []
        if nbytes > self.capacity_bytes:
            return None
        evicted: list[str] = []
        for victim in list(self.items):
            if self.used_bytes + nbytes <= self.capacity_bytes:
                break
            if self.pinned.get(victim, 0) == 0:
                self.used_bytes -= self.items.pop(victim)
                evicted.append(victim)
                self._names = None
        if self.used_bytes + nbytes > self.capacity_bytes:
            return None
        self.items[model] = nbytes
        self._names = None
        self.used_bytes += nbytes
        if self.used_bytes > self.capacity_bytes:
            raise SimulatorInvariantError(
                f"{self.name} tier over capacity: {self.used_bytes} > {self.capacity_bytes}"
            )
        return evicted


class WorkerPoolClock:
    """When a server's ``pool`` runtime has ready workers (``runtimes/workerpool.py`` in simulated time).

    ``size`` workers are ready at t=0. One refill thread starts a worker (``worker_start_s``) whenever fewer than
    ``size`` are ready and none is starting, one at a time; a handed-out worker's replacement is due at once,
    or with ``refill_after_load`` once :meth:`loaded` says its cold start is over (the real pool's ``refill``).
    ``acquire(now)`` hands out a ready worker, or waits for the one starting. ``give_back(now)`` is an instance
    leaving its worker after unload (an eviction, a finished migration source): it is ready again if fewer than
    ``size`` are
    (``WorkerPool.release``; the simulator takes every worker as reusable, as the pool's RSS rule finds them on CPU),
    else it is closed. A killed instance's worker (a preemption) never comes back.
    """

    __slots__ = ("_held", "_idle", "_starting_until", "refill_after_load", "size", "worker_start_s")

    def __init__(self, size: int, worker_start_s: float, refill_after_load: bool = False) -> None:
        if size < 1:
            raise ValueError(f"cluster.runtime.pool_size={size!r} is not allowed; it must be ≥ 1")
        self.size, self.worker_start_s, self.refill_after_load = size, worker_start_s, refill_after_load
        self._idle = [0.0] * size  # when each ready worker became ready (a heap)
        self._starting_until: float | None = None  # when the worker being started is ready
        self._held = 0  # handed out, replacement deferred until loaded() (refill_after_load)

    def _advance(self, now_s: float) -> None:
        """Finish the starts that end by ``now_s``; each starts the next while fewer than ``size`` are ready."""
        while self._starting_until is not None and self._starting_until <= now_s:
            done = self._starting_until
            heapq.heappush(self._idle, done)
            self._starting_until = done + self.worker_start_s if self._short() else None

    def _short(self) -> bool:
        return len(self._idle) + self._held < self.size

    def _refill_from(self, t: float) -> None:
        if self._starting_until is None and self._short():
            self._starting_until = t + self.worker_start_s

    def ready_at(self) -> list[float]:
        """When each of ``size`` workers is (or, if nothing is handed out meanwhile, will be) ready."""
        out = sorted(self._idle)
        t = self._starting_until
        while t is not None and len(out) + self._held < self.size:
            out.append(t)
            t += self.worker_start_s
        return out

    def acquire(self, now_s: float) -> float:
        """Take a worker for a cold start that asks at ``now_s``; returns when it has one (≥ ``now_s``)."""
        self._advance(now_s)
        got = now_s
        if not self._idle:
            if self._starting_until is None:  # every worker is held by a cold start still loading (only with
                self._starting_until = now_s + self.worker_start_s  # several load slots): start one now
            got = self._starting_until
            self._advance(got)
        heapq.heappop(self._idle)
        if self.refill_after_load:
            self._held += 1
        else:
            self._refill_from(got)
        return got

    def loaded(self, now_s: float) -> None:
        """The cold start that took a worker is loaded at ``now_s``: with ``refill_after_load`` its replacement
        starts now (one at a time)."""
        if self.refill_after_load and self._held:
            self._advance(now_s)
            self._held -= 1
            self._refill_from(now_s)

    def give_back(self, now_s: float) -> bool:
        """An instance left its worker at ``now_s``: True if the worker is ready again (fewer than ``size`` were)."""
        self._advance(now_s)
        if len(self._idle) >= self.size:
            return False
        heapq.heappush(self._idle, now_s)
        return True


class Server:
    """A server's mutable state; ``view()`` returns a cached read-only ``ServerView`` rebuilt after each
    change."""

    def __init__(self, sid: int, cluster: Cluster, dirty_set: set[int] | None = None) -> None:
        self.id = sid
        self._dirty_set = dirty_set if dirty_set is not None else set()
        self.num_gpus = cluster.gpus_per_server
        self.free_gpus = cluster.gpus_per_server
        self.dram = TierStore(f"server {sid} DRAM", cluster.dram_bytes)
        self.ssd = TierStore(f"server {sid} SSD", cluster.ssd_bytes)
        self.gbps: dict[str, float] = {
            "dram": cluster.dram_gbps,
            "ssd": cluster.ssd_gbps,
            "remote": cluster.remote_gbps,
        }
        self.instances: dict[int, Instance] = {}
        self.queue: deque[LoadJob] = deque()
        self.active_loads = 0
        self.slot_free_at = [0.0] * cluster.load_slots  # estimated time each loading slot frees up
        self.links: dict[str, Any] = {}
        rt = cluster.runtime
        self.pool = (WorkerPoolClock(rt.pool_size, rt.worker_start_s, refill_after_load=rt.refill == "after_load")
                     if rt.kind == "pool" else None)
        self._view: ServerView | None = None

    def dirty(self) -> None:
        self._view = None
        self._dirty_set.add(self.id)

    def take_gpus(self, n: int) -> None:
        self.free_gpus -= n
        if self.free_gpus < 0:
            raise SimulatorInvariantError(f"server {self.id}: GPUs over-allocated (free {self.free_gpus})")
        self.dirty()

    def give_gpus(self, n: int) -> None:
        self.free_gpus += n
        if self.free_gpus > self.num_gpus:
            raise SimulatorInvariantError(f"server {self.id}: more GPUs freed than it has ({self.free_gpus})")
        self.dirty()

    def queue_free_at(self) -> float:
        """When the loading queue is expected to drain (estimates of the loads enqueued so far)."""
        return min(self.slot_free_at)

    def reserve_slot(self, now: float, est_s: float) -> int:
        """Add a load's estimate to the slot that frees first; returns that slot (to correct it later)."""
        i = min(range(len(self.slot_free_at)), key=self.slot_free_at.__getitem__)
        self.slot_free_at[i] = max(now, self.slot_free_at[i]) + est_s
        self.dirty()
        return i

    def correct_slot(self, slot: int, delta_s: float) -> None:
        """A reserved load turned out ``delta_s`` longer (negative: shorter) than estimated."""
        self.slot_free_at[slot] += delta_s
        self.dirty()

    def view(self) -> ServerView:
        """The read-only view policies see, cached until the server changes (it holds no clock-dependent
        values)."""
        if self._view is None:
            insts = []
            idle = 0
            for inst in self.instances.values():
                state = inst.state
                if state == "busy":
                    insts.append(_instance_view(inst))
                elif state == "idle":
                    idle += inst.gpus
                    insts.append(_instance_view(inst))
            self._view = ServerView(
                self.id,
                self.num_gpus,
                self.free_gpus,
                idle,
                self.queue_free_at(),
                self.dram.names(),
                self.ssd.names(),
                self.gbps["dram"],
                self.gbps["ssd"],
                self.gbps["remote"],
                tuple(insts),
            )
        return self._view


def _instance_view(inst: Instance) -> InstanceView:
    busy = inst.state == "busy"
    return InstanceView(
        inst.id,
        inst.info.name,
        inst.server.id,
        inst.gpus,
        busy,
        inst.request if busy else None,
        inst.prompt_tokens,
        inst.first_token_s,
        inst.done_s,
        inst.info.decode_s_per_token,
        None if busy else inst.idle_since,
        inst.migrating_to is not None or inst.handoff_to is not None,
    )


def generated_tokens(t: float, first_token_s: float, decode_s: float, done_s: float) -> int:
    """Output tokens produced by time ``t``: one at the first token, then one per ``decode_s``."""
    if t < first_token_s:
        return 0
    if t >= done_s:
        return 1 + round((done_s - first_token_s) / decode_s) if decode_s > 0 else 1
    return 1 + int((t - first_token_s) / decode_s) if decode_s > 0 else 1
