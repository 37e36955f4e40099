"""What the real controller does with instances once they exist: idle windows and pre-warming from the keep-alive
policy, eviction with demotion, releasing slots, killing processes, and live migration's hand-over (what the idle
and migration parts of ``schedulers/simulator.py`` do, for live instances)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from schedulers.real.slots import LiveInstance, LiveServer

if TYPE_CHECKING:
    from schedulers.real.controller import Controller


def next_or_idle(ctl: Controller, inst: LiveInstance) -> None:
    for rid in list(ctl.waiting):
        r = ctl.reqs[rid]
        if r.model == inst.model:
            ctl.waiting.remove(rid)
            r.tier, r.server, r.placed_s, r.load_s = "gpu", inst.server, ctl.now(), 0.0
            ctl._start_serving(inst, r)
            return
    inst.state, inst.request, inst.idle_since_s = "idle", None, ctl.now()
    inst.version += 1
    if ctl.active[inst.model] == 0:
        ctl.last_idle_start[inst.model] = ctl.now()
    keep, inst.prewarm_keep_s = inst.prewarm_keep_s, None
    if keep is None:  # a pre-warmed instance's first window was decided when it was unloaded
        kd = ctl.keepalive.decide(inst.model)
        if kd.prewarm_s > 0:  # unload now, load again just before the next request is expected
            evict(ctl, inst)
            ctl.at(ctl.now() + kd.prewarm_s, prewarm, ctl, inst.model, inst.server,
                    max(kd.keep_alive_s - kd.prewarm_s, 0.0))
            ctl._retry()
            return
        keep = kd.keep_alive_s
    if math.isfinite(keep):
        ctl.at(ctl.now() + keep, expire, ctl, inst, inst.version)


def prewarm(ctl: Controller, model: str, sid: int, keep_s: float) -> None:
    """Load ``model`` on server ``sid`` ahead of its next request (hybrid histogram's pre-warm window), unless
    an instance of it is already idle or the server has no free slot (as the simulator does)."""
    ctl.stats["events"] += 1
    server, info = ctl.servers[sid], ctl.models[model]
    if any(i.model == model and i.state == "idle" for i in ctl.instances.values()) or \
            server.free_gpus < info.gpus:
        return
    ctl.stats["prewarms"] += 1
    inst = LiveInstance(next(ctl._ids), model, sid, info.gpus, tier=server.view().best_tier(model),
                        cache_to=(), prewarm_keep_s=keep_s)
    ctl.instances[inst.iid] = inst
    server.instances[inst.iid] = inst
    ctl._grab_gpus(inst)


def expire(ctl: Controller, inst: LiveInstance, version: int) -> None:
    if inst.state == "idle" and inst.version == version:
        evict(ctl, inst)
        ctl._retry()


def evict(ctl: Controller, inst: LiveInstance) -> None:
    """Take an idle instance off its slot; demote its checkpoint as the keep-alive policy says."""
    account_idle(ctl, inst)
    ctl.tiers.demote(ctl.servers[inst.server], inst.model, ctl.keepalive.demote_to)
    kill_instance(ctl, inst, None)


def evict_idle_for(ctl: Controller, server: LiveServer, gpus: int) -> None:
    for inst in sorted((i for i in server.instances.values() if i.state == "idle"),
                       key=lambda i: i.idle_since_s or 0.0):
        if server.free_gpus >= gpus:
            return
        evict(ctl, inst)


def account_idle(ctl: Controller, inst: LiveInstance) -> None:
    if inst.state == "idle" and inst.idle_since_s is not None:
        gb = (ctl.cfg.slot_memory_bytes or 0) / 1e9
        ctl.stats["idle_gpu_gb_s"] += inst.gpus * gb * (ctl.now() - inst.idle_since_s)
        inst.idle_since_s = None


def account_release(ctl: Controller, inst: LiveInstance, now: float) -> None:
    if inst.acquired_s is not None:
        ctl.stats["gpu_seconds"] += inst.gpus * (now - inst.acquired_s)
        inst.acquired_s = None


def release(ctl: Controller, inst: LiveInstance) -> None:
    if inst.state == "gone":
        return
    server = ctl.servers[inst.server]
    if inst.state != "pending":
        server.free_gpus += inst.gpus
    account_release(ctl, inst, ctl.now())
    inst.state = "gone"
    server.instances.pop(inst.iid, None)
    ctl.instances.pop(inst.iid, None)


def kill_instance(ctl: Controller, inst: LiveInstance, reason: str | None) -> None:
    handle = inst.handle
    release(ctl, inst)
    if handle is not None:
        ctl._pool.submit(handle.kill if reason else handle.close)


# ---------------------------------------------------------------- live migration
def start_migration(ctl: Controller, iid: int, dst_server: int) -> None:
    src = ctl.instances.get(iid)
    if src is None or src.state != "busy" or src.migrate_to is not None:
        return
    ctl.stats["migrations"] += 1
    dst = LiveInstance(next(ctl._ids), src.model, dst_server, src.gpus, tier=
                       ctl.servers[dst_server].view().best_tier(src.model))
    dst.migrating = src.migrating = True
    ctl.instances[dst.iid] = dst
    ctl.servers[dst_server].instances[dst.iid] = dst
    src.migrate_to = dst
    ctl._grab_gpus(dst)


def migration_started(ctl: Controller, src: LiveInstance, dst: LiveInstance) -> None:
    """The rounds are over and ``dst`` decodes: free ``src``; its slot goes to whoever was placed behind it."""
    dst.state, dst.request, dst.migrating = "busy", src.request, False
    dst.prompt_tokens, dst.first_token_s, dst.done_s = src.prompt_tokens, src.first_token_s, src.done_s
    dst.decode_s_per_token = src.decode_s_per_token
    src.migrating = False
    kill_instance(ctl, src, None)
    ctl._retry()
