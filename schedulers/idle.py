"""Idle instances in the simulator: keep-alive windows, pre-warming, eviction with demotion, GPU release."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from schedulers import loading
from schedulers.state import Instance, Server

if TYPE_CHECKING:
    from schedulers.simulator import Simulator


def go_idle(sim: Simulator, inst: Instance, keep_s: float | None = None) -> None:
    """Park ``inst`` on its GPUs for the keep-alive window (or unload it now and pre-warm it later)."""
    m = inst.info.name
    inst.state, inst.idle_since, inst.abort = "idle", sim.env.now, False
    inst.migration_src = None
    inst.server.dirty()
    sim._retry_flag = True
    if keep_s is None:
        kd = sim.keepalive.decide(m)
        if kd.prewarm_s > 0:
            evict(sim, inst)
            sim._at(
                sim.env.now + kd.prewarm_s,
                _prewarm,
                sim,
                m,
                inst.server,
                max(kd.keep_alive_s - kd.prewarm_s, 0.0),
            )
            return
        keep_s = kd.keep_alive_s
    sim.idle_by_model[m][inst.id] = inst
    inst.version += 1
    if math.isfinite(keep_s):
        sim._at(sim.env.now + keep_s, _expire, sim, inst, inst.version)


def _prewarm(sim: Simulator, m: str, server: Server, keep_s: float) -> None:
    sim.stats["events"] += 1
    info = sim.models[m]
    if sim.idle_by_model[m] or server.free_gpus < info.gpus:
        return
    inst = sim._new_instance(info, server)
    inst.prewarm_keep_s = keep_s
    sim.gather(inst, server)
    sim.log("prewarm", instance=inst.id, model=m, server=server.id)
    loading.enqueue(sim, inst, server.view().best_tier(m), None, False)


def _expire(sim: Simulator, inst: Instance, version: int) -> None:
    if version != inst.version or inst.state != "idle":
        return
    sim.stats["events"] += 1
    evict(sim, inst)
    sim._after()


def evict(sim: Simulator, inst: Instance) -> None:
    """Take an idle instance off its GPUs and demote its checkpoint (GPU → DRAM → SSD, as the policy
    says)."""
    m, server = inst.info.name, inst.server
    if sim.idle_by_model[m].pop(inst.id, None) is not None:
        sim.stats["idle_gpu_gb_s"] += inst.gpus * sim.cluster.gpu_mem_gb * (sim.env.now - inst.idle_since)
    release(sim, inst)
    demoted = loading.store_checkpoint(sim, server, m, sim.keepalive.demote_to)
    sim.log("evict", instance=inst.id, model=m, server=server.id, demoted=demoted)
    server.dirty()
    sim._retry_flag = True


def release(sim: Simulator, inst: Instance) -> None:
    """Free ``inst``'s GPUs (or hand them to the pending instance waiting for them)."""
    server = inst.server
    sim.stats["gpu_seconds"] += inst.gpus * (sim.env.now - inst.acquired_s)
    sim.instances.pop(inst.id, None)
    server.instances.pop(inst.id, None)
    sim.inst_count[inst.info.name] -= 1
    inst.version += 1
    inst.state = "gone"
    target, inst.handoff_to = inst.handoff_to, None
    if target is not None and target.state == "pending":
        take = min(inst.gpus, target.gpus - target.have)
        target.have += take
        if inst.gpus - take:
            server.give_gpus(inst.gpus - take)
        if target.have >= target.gpus:
            sim.handoff(target)
    else:
        server.give_gpus(inst.gpus)
    server.dirty()
    sim._retry_flag = True
