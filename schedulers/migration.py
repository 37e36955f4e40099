"""Live migration and preemption in the simulator (ServerlessLLM §5: token-based migration in rounds)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from schedulers import idle, loading
from schedulers.errors import SimulatorInvariantError
from schedulers.state import Instance, Server, generated_tokens

if TYPE_CHECKING:
    from schedulers.simulator import Simulator

MAX_ROUNDS = 100


def preempt(sim: Simulator, victim: Instance, target: Instance) -> None:
    """Kill a running instance (Shepherd*): its request restarts from scratch, its GPUs go to
    ``target``."""
    from schedulers.simulator import RUNNING

    i = victim.request
    if victim.state != "busy" or sim.state[i] != RUNNING:
        raise SimulatorInvariantError(f"preempting instance {victim.id} in state {victim.state}")
    sim.stats["preemptions"] += 1
    sim.r["preempted"][i] += 1
    sim.active[victim.info.name] -= 1
    victim.request = -1
    victim.handoff_to = target
    sim.log("preempt", instance=victim.id, request=i, server=victim.server.id)
    idle.release(sim, victim)
    sim._add_waiting(i, front=True)


def migrate(sim: Simulator, src: Instance, dst: Server, target: Instance) -> None:
    """Start migrating busy ``src`` to ``dst``: the destination loads the model, then re-prefills in
    rounds."""
    if src.state != "busy" or src.migrating_to is not None:
        raise SimulatorInvariantError(f"migrating instance {src.id} in state {src.state}")
    src.handoff_to = target
    dest = sim._new_instance(src.info, dst)
    dest.migration_src, dest.prompt_tokens, dest.request = src, src.prompt_tokens, -1
    src.migrating_to = dest
    sim.gather(dest, dst)
    if dest.have < dest.gpus:
        raise SimulatorInvariantError(f"migration target server {dst.id} lacks GPUs for {src.info.name}")
    src.server.dirty()
    sim.log(
        "migration_start",
        instance=src.id,
        request=src.request,
        src=src.server.id,
        dst=dst.id,
        model=src.info.name,
    )
    loading.enqueue(sim, dest, dst.view().best_tier(src.info.name), None, False)


def migration_loaded(sim: Simulator, dest: Instance) -> None:
    """The destination has the model: plan the re-prefill rounds until a round yields < stop-token new
    tokens."""
    src = dest.migration_src
    assert src is not None
    if dest.abort or src.state != "busy" or src.migrating_to is not dest:
        idle.go_idle(sim, dest)
        return
    info, d = src.info, src.info.decode_s_per_token
    gen = lambda t: generated_tokens(t, src.first_token_s, d, src.done_s)  # noqa: E731
    t = sim.env.now
    tokens = src.prompt_tokens + gen(t)
    dest.state = "syncing"
    for k in range(MAX_ROUNDS):
        t_next = t + info.prefill_s(tokens)
        new = gen(t_next) - gen(t)
        sim.log(
            "migration_round",
            instance=src.id,
            round=k,
            tokens=tokens,
            start=t,
            end=t_next,
            new_tokens=new,
        )
        if t_next >= src.done_s:
            return  # the source finishes first; its completion aborts the migration
        if new < sim.cfg.migration_stop_tokens:
            break
        tokens, t = new, t_next
    sim._at(t_next, _migration_stop, sim, src, dest, src.version, new)


def _migration_stop(sim: Simulator, src: Instance, dest: Instance, version: int, last: int) -> None:
    """The source stops; the destination prefills the last few tokens and continues decoding the
    request."""
    if version != src.version or src.migrating_to is not dest:
        return
    sim.stats["events"] += 1
    sim.stats["migrations"] += 1
    i, info = src.request, src.info
    d = info.decode_s_per_token
    done_tokens = generated_tokens(sim.env.now, src.first_token_s, d, src.done_s)
    resume = sim.env.now + info.prefill_s(max(last, 1))
    remaining = sim.out[i] - done_tokens
    dest.state, dest.request, dest.migration_src = "busy", i, None
    dest.done_s = resume + remaining * d
    dest.first_token_s = dest.done_s - (sim.out[i] - 1) * d  # so that generated_tokens() stays exact
    sim.r["migration_s"][i] += resume - sim.env.now
    sim.r["migrated"][i] += 1
    src.migrating_to = None
    sim.log(
        "migration_done",
        instance=src.id,
        request=i,
        dst_instance=dest.id,
        src=src.server.id,
        dst=dest.server.id,
        pause_s=resume - sim.env.now,
    )
    idle.release(sim, src)  # hands the GPUs to the waiting placement
    dest.server.dirty()
    sim.schedule_completion(dest)
    sim._after()


def source_finished(sim: Simulator, src: Instance) -> None:
    """A migrating (or handing-off) instance finished its request first: abort and pass its GPUs on."""
    dest: Any = src.migrating_to
    if dest is not None:
        sim.stats["migrations_aborted"] += 1
        sim.log("migration_aborted", instance=src.id, dst_instance=dest.id)
        src.migrating_to = None
        if dest.state == "syncing":
            idle.go_idle(sim, dest)
        else:
            dest.abort = True
    idle.release(sim, src)
