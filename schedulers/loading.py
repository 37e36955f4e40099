"""Loading queues and the checkpoint tiers loads read and write: what both engines do around a cold start's load
(the backend moves the bytes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from schedulers.base import ModelInfo, Tier, load_slot_s
from schedulers.clock import Clock
from schedulers.records import RequestRecords
from schedulers.state import Instance, LoadJob, Server

TIER_ORDER: tuple[Tier, ...] = ("dram", "ssd", "remote")


class LoadQueues:
    """Each server's loading queue (``load_slots`` loads at a time, the rest wait in order) and the bookkeeping of
    a load: the slot's estimated busy time (``load_slot_s``, corrected when a pool wait or a tier upgrade changes
    it), the tier it reads (pinned against LRU eviction meanwhile), the copies it leaves (the policy's
    ``cache_to``, write-through), and its request's record.

    ``start_load(job)`` is the backend's: it gets a ready process and moves the bytes, then calls ``done`` (or
    ``failed``); it may call ``runtime_ready`` once it knows what getting the process cost.
    """

    def __init__(self, clock: Clock, models: Mapping[str, ModelInfo], rec: RequestRecords,
                 stats: dict[str, float], start_load: Callable[[LoadJob], None],
                 storage_changed: Callable[[Server], None], log: Callable[..., None]) -> None:
        self.clock, self.models, self.rec, self.stats = clock, models, rec, stats
        self.start_load, self.storage_changed, self.log = start_load, storage_changed, log

    def enqueue(self, inst: Instance, tier: Tier, loader_gbps: float | None, dtl: bool,
                cache_to: tuple[Tier, ...], upgrade: bool) -> None:
        """Queue ``inst``'s load on its server; reserve the slot that frees first for its estimated time."""
        server = inst.server
        now = self.clock.now()
        est = load_slot_s(inst.info, server.gbps[tier], loader_gbps, server.gbps["remote"], dtl)
        slot = server.reserve_slot(now, est)  # a pool's wait for a worker is added when the load knows it
        server.pin(inst.info.name, tier)
        inst.state = "loading"
        if inst.request >= 0 and inst.migration_src is None:
            self.rec.r["enq_s"][inst.request] = now
        server.queue.append(LoadJob(inst, tier, loader_gbps, dtl, est, cache_to, upgrade, slot))
        self.pump(server)

    def pump(self, server: Server) -> None:
        while server.active_loads < len(server.slot_free_at) and server.queue:
            job = server.queue.popleft()
            server.active_loads += 1
            self._start(job, self.clock.now())

    def _start(self, job: LoadJob, start: float) -> None:
        """A load takes its slot: the tier it reads now (a faster copy may have landed), its request's record."""
        inst = job.instance
        if job.upgrade and not job.download_then_load:
            self._upgrade_tier(job)
        if inst.request >= 0 and inst.migration_src is None:
            self.rec.r["load_start_s"][inst.request] = start
            self.rec.r["tier_loaded"][inst.request] = job.tier
        job.start_s = start
        self.start_load(job)

    def runtime_ready(self, job: LoadJob, wait_s: float, startup_s: float) -> None:
        """The load has its process: ``wait_s`` of waiting for a pool worker (which moves the slot's estimated free
        time, as a tier upgrade does) and ``startup_s`` of start-up in all (the wait included)."""
        if wait_s > 0:
            job.instance.server.correct_slot(job.slot, wait_s)
            job.est_s += wait_s
            self.stats["pool_wait_s"] += wait_s
        self.stats["runtime_wait_s"] += startup_s
        job.startup_s = startup_s

    def _upgrade_tier(self, job: LoadJob) -> None:
        """A fast loader reads the fastest copy present when the load starts (an earlier load may have cached
        it); the loading-queue time reserved for it at placement shrinks to the new tier's estimate, so later
        startup estimates (q in q + n/b) see the queue as it now is."""
        server, m = job.instance.server, job.instance.info.name
        best = server.best_local_tier(m)
        if TIER_ORDER.index(best) >= TIER_ORDER.index(job.tier):
            return
        server.unpin(m, job.tier)
        server.pin(m, best)
        self.log("tier_upgrade", instance=job.instance.id, model=m, server=server.id, old=job.tier, new=best)
        job.tier = best
        est = load_slot_s(job.instance.info, server.gbps[best], job.loader_gbps)
        server.correct_slot(job.slot, est - job.est_s)
        job.est_s = est

    def done(self, job: LoadJob, **log_fields: Any) -> None:
        """The load's slot is free: the tier it read is unpinned (and touched), the copies ``cache_to`` asks for
        are kept, and the next queued load starts."""
        self.stats["loads"] += 1
        inst, server = job.instance, job.instance.server
        server.active_loads -= 1
        m = inst.info.name
        server.unpin(m, job.tier, touch=True)
        if job.cache_to and server.store_checkpoint(m, job.cache_to, self.models, through=True):
            self.storage_changed(server)
        self.log("load", instance=inst.id, model=m, server=server.id, tier=job.tier, bytes=inst.info.size_bytes,
                 start=job.start_s, duration_s=self.clock.now() - job.start_s, runtime_s=job.startup_s,
                 gbps=server.gbps[job.tier], **log_fields)
        self.pump(server)

    def failed(self, job: LoadJob) -> None:
        """The load failed (a real process's): its slot and tier are free; nothing is cached."""
        server = job.instance.server
        server.active_loads -= 1
        server.unpin(job.instance.info.name, job.tier)
        server.dirty()
        self.pump(server)
