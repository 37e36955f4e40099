"""Loading in the simulator: per-server loading queues, tier reads with fair sharing, checkpoint caching."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from schedulers.base import Tier
from schedulers.errors import SimulatorInvariantError
from schedulers.links import FairShareLink
from schedulers.state import Instance, LoadJob, Server

if TYPE_CHECKING:
    from schedulers.simulator import Simulator

TIER_ORDER: tuple[Tier, ...] = ("dram", "ssd", "remote")


def enqueue(
    sim: Simulator,
    inst: Instance,
    tier: Tier,
    loader_gbps: float | None,
    dtl: bool,
    cache_to: tuple[Tier, ...] = ("dram", "ssd"),
) -> None:
    server, n = inst.server, inst.info.size_bytes
    bw = min(server.gbps[tier], loader_gbps or math.inf)
    est = (
        n / (server.gbps["remote"] * 1e9) + n / (loader_gbps * 1e9) if dtl and loader_gbps else n / (bw * 1e9)
    )
    server.reserve_slot(sim.env.now, est)
    if tier in ("dram", "ssd"):
        store = server.dram if tier == "dram" else server.ssd
        store.pinned[inst.info.name] = store.pinned.get(inst.info.name, 0) + 1
    inst.state = "loading"
    if inst.request >= 0 and inst.migration_src is None:
        sim.r["enq_s"][inst.request] = sim.env.now
    server.queue.append(LoadJob(inst, tier, loader_gbps, dtl, est, cache_to))
    pump(sim, server)


def pump(sim: Simulator, server: Server) -> None:
    while server.active_loads < len(server.slot_free_at) and server.queue:
        job = server.queue.popleft()
        server.active_loads += 1
        start_load(sim, job, sim.env.now)


def link(sim: Simulator, server: Server, tier: str) -> FairShareLink:
    if tier == "remote" and sim.store_link is not None:
        return sim.store_link
    if tier not in server.links:
        server.links[tier] = FairShareLink(sim.env, server.gbps[tier] * 1e9)
    link: FairShareLink = server.links[tier]
    return link


def start_load(sim: Simulator, job: LoadJob, start: float) -> None:
    inst, server, n = job.instance, job.instance.server, job.instance.info.size_bytes
    if not job.download_then_load:
        upgrade_tier(sim, job)
    if inst.request >= 0 and inst.migration_src is None:
        sim.r["load_start_s"][inst.request] = start
        sim.r["tier"][inst.request] = job.tier

    def done() -> None:
        load_done(sim, job, start)

    loader_gbps = job.loader_gbps
    if job.download_then_load and loader_gbps:
        # KServe / Ray Serve: the whole checkpoint lands on local disk first, then torch.load reads it.
        def second() -> None:
            sim._at(sim.env.now + n / (loader_gbps * 1e9), done)

        link(sim, server, "remote").start(n, server.gbps["remote"] * 1e9, second)
    else:
        cap = min(server.gbps[job.tier], job.loader_gbps or math.inf) * 1e9
        link(sim, server, job.tier).start(n, cap, done)


def upgrade_tier(sim: Simulator, job: LoadJob) -> None:
    """A fast loader reads the fastest copy present when the load starts (an earlier load may have cached
    it)."""
    server, m = job.instance.server, job.instance.info.name
    best: Tier = "dram" if m in server.dram else "ssd" if m in server.ssd else "remote"
    if TIER_ORDER.index(best) >= TIER_ORDER.index(job.tier):
        return
    if job.tier in ("dram", "ssd"):
        old = server.dram if job.tier == "dram" else server.ssd
        old.pinned[m] -= 1
    new = server.dram if best == "dram" else server.ssd
    new.pinned[m] = new.pinned.get(m, 0) + 1
    sim.log("tier_upgrade", instance=job.instance.id, model=m, server=server.id, old=job.tier, new=best)
    job.tier = best


def store_checkpoint(
    sim: Simulator, server: Server, model: str, tiers: tuple[Tier, ...]
) -> list[tuple[str, str]]:
    """Put ``model`` into ``tiers`` in order; a tier's LRU victims fall to the next tier of the chain."""
    stored: list[tuple[str, str]] = []
    pending = [model]
    changed = False
    for tier in tiers:
        store = server.dram if tier == "dram" else server.ssd
        spill: list[str] = []
        for name in pending:
            new = name not in store
            evicted = store.insert(name, sim.models[name].size_bytes)
            if evicted is not None:
                stored.append((name, tier))
                spill.extend(evicted)
                changed = changed or new or bool(evicted)
        pending = spill
    if changed:
        server.dirty()
    return stored


def load_done(sim: Simulator, job: LoadJob, start: float) -> None:
    sim.stats["events"] += 1
    sim.stats["loads"] += 1
    inst, server = job.instance, job.instance.server
    server.active_loads -= 1
    m, dur = inst.info.name, sim.env.now - start
    floor_s = inst.info.size_bytes / (server.gbps[job.tier] * 1e9)
    if dur < floor_s * (1 - 1e-9):
        raise SimulatorInvariantError(
            f"load of {m} from {job.tier} took {dur} s < bytes/bandwidth {floor_s} s"
        )
    if job.tier in ("dram", "ssd"):
        store = server.dram if job.tier == "dram" else server.ssd
        store.pinned[m] -= 1
        store.touch(m)
    if job.cache_to:
        store_checkpoint(sim, server, m, job.cache_to)
    sim.log(
        "load",
        instance=inst.id,
        model=m,
        server=server.id,
        tier=job.tier,
        bytes=inst.info.size_bytes,
        start=start,
        duration_s=dur,
        gbps=server.gbps[job.tier],
    )
    pump(sim, server)
    if inst.info.build_s > 0:
        sim._at(sim.env.now + inst.info.build_s, sim.ready, inst)
    else:
        sim.ready(inst)
