"""Instances that hand their GPUs to a placement that asked for them: live migration (ServerlessLLM §5.3: the
running request moves to a destination that loads the model and re-prefills the tokens in rounds) and preemption
(Shepherd*: the running request is killed and restarts from scratch). The lifecycle's bookkeeping of both; a
backend runs a migration's rounds (``Backend.migrate``) and ends them with ``stop``."""

from __future__ import annotations

from typing import Any, Protocol

from schedulers.errors import SimulatorInvariantError
from schedulers.records import RUNNING
from schedulers.state import Instance, Server, generated_tokens


class Owner(Protocol):
    """What the lifecycle offers this part of it (``schedulers.lifecycle.Lifecycle``)."""

    clock: Any
    rec: Any
    stats: dict[str, float]
    loads: Any
    backend: Any
    cache_to: tuple[Any, ...]
    tier_upgrade: bool

    def log(self, kind: str, **fields: Any) -> None: ...

    def new_instance(self, info: Any, server: Server) -> Instance: ...

    def gather(self, inst: Instance, server: Server) -> None: ...

    def release(self, inst: Instance) -> None: ...

    def next_or_idle(self, inst: Instance, keep_s: float | None = None) -> None: ...

    def after(self) -> None: ...


class Migrations:
    """Preemptions and live migrations of running instances, for ``life``."""

    def __init__(self, life: Owner) -> None:
        self.life = life

    def preempt(self, victim: Instance, target: Instance) -> None:
        """Kill a running instance (Shepherd*): its request restarts from scratch, first in line; its GPUs go to
        ``target``."""
        life = self.life
        i = victim.request
        if victim.state != "busy" or life.rec.state[i] != RUNNING:
            raise SimulatorInvariantError(f"preempting instance {victim.id} in state {victim.state}")
        life.stats["preemptions"] += 1
        life.rec.r["preempted"][i] += 1
        victim.request = -1
        victim.handoff_to = target
        life.log("preempt", instance=victim.id, request=i, server=victim.server.id)
        life.release(victim)
        life.backend.released(victim, True)
        life.rec.add_waiting(i, front=True)

    def start(self, src: Instance, dst: Server, target: Instance) -> None:
        """Start migrating busy ``src`` to ``dst``: the destination loads the model (with the policy's storage),
        then re-prefills in rounds; ``src``'s GPUs go to ``target`` when it stops."""
        life = self.life
        if src.state != "busy" or src.migrating_to is not None:
            raise SimulatorInvariantError(f"migrating instance {src.id} in state {src.state}")
        src.handoff_to = target
        dest = life.new_instance(src.info, dst)
        dest.migration_src, dest.prompt_tokens, dest.request = src, src.prompt_tokens, -1
        src.migrating_to = dest
        life.gather(dest, dst)
        if dest.have < dest.gpus:
            raise SimulatorInvariantError(f"migration target server {dst.id} lacks GPUs for {src.info.name}")
        src.server.dirty()
        life.log("migration_start", instance=src.id, request=src.request, src=src.server.id, dst=dst.id,
                 model=src.info.name)
        life.loads.enqueue(dest, dst.view().best_tier(src.info.name), None, False, life.cache_to, life.tier_upgrade)

    def loaded(self, dest: Instance) -> None:
        """The destination has the model: the backend runs the rounds (unless the migration is off already)."""
        src = dest.migration_src
        assert src is not None
        if dest.abort or src.state != "busy" or src.migrating_to is not dest:
            self.life.next_or_idle(dest)
            return
        dest.state = "syncing"
        self.life.backend.migrate(src, dest)

    def stop(self, src: Instance, dest: Instance, version: int, last: int) -> None:
        """The last round produced ``last`` (< stop) new tokens: the source stops now and hands its GPUs on; the
        destination prefills those tokens and goes on with the request."""
        life = self.life
        if version != src.version or src.migrating_to is not dest:
            return
        life.stats["events"] += 1
        life.stats["migrations"] += 1
        i, info, now = src.request, src.info, life.clock.now()
        d = info.decode_s_per_token
        done_tokens = generated_tokens(now, src.first_token_s, d, src.done_s)
        resume = now + info.prefill_s(max(last, 1))
        out = life.rec.out[i]
        dest.state, dest.request, dest.migration_src = "busy", i, None
        dest.done_s = resume + (out - done_tokens) * d
        dest.first_token_s = dest.done_s - (out - 1) * d  # so that generated_tokens() stays exact
        life.rec.r["migration_s"][i] += resume - now
        life.rec.r["migrated"][i] += 1
        src.migrating_to = None
        life.log("migration_done", instance=src.id, request=i, dst_instance=dest.id, src=src.server.id,
                 dst=dest.server.id, pause_s=resume - now)
        life.release(src)  # hands the GPUs to the waiting placement
        life.backend.released(src, False)
        dest.server.dirty()
        dest.version += 1
        life.backend.serve(dest, i)
        life.after()

    def abort(self, src: Instance) -> None:
        """``src``'s migration is off (its request finished first, or its process died): a destination re-prefilling
        is free at once, one still loading is when loaded."""
        dest, src.migrating_to = src.migrating_to, None
        if dest is None:
            return
        self.life.stats["migrations_aborted"] += 1
        self.life.log("migration_aborted", instance=src.id, dst_instance=dest.id)
        if dest.state == "syncing":
            self.life.next_or_idle(dest)
        else:
            dest.abort = True
