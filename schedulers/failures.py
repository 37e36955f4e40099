"""What the lifecycle does when a real process fails (the backend reports it; the simulator never does): a load
that failed frees its slot and its request is placed again or fails; a model that failed to load too often has
its requests fail at once; a request whose process died is retried elsewhere a few times, then fails."""

from __future__ import annotations

from typing import Any, Protocol

from schedulers.records import ASSIGNED
from schedulers.state import Instance, LoadJob


class Owner(Protocol):
    """What the lifecycle offers this part of it (``schedulers.lifecycle.Lifecycle``)."""

    rec: Any
    stats: dict[str, float]
    loads: Any
    backend: Any
    migrations: Any

    def release(self, inst: Instance) -> None: ...

    def next_or_idle(self, inst: Instance, keep_s: float | None = None) -> None: ...

    def decide(self, i: int) -> bool: ...

    def expired(self, i: int) -> bool: ...

    def fail(self, i: int, reason: str) -> None: ...

    def after(self) -> None: ...


class Failures:
    """Failed loads and dead processes, for ``life``; ``given_up``: models whose requests fail at once."""

    def __init__(self, life: Owner) -> None:
        self.life = life
        self.load_failures: dict[str, int] = {}
        self.given_up: dict[str, str] = {}

    def load_failed(self, job: LoadJob, reason: str, give_up_after: int, max_retries: int) -> None:
        """A load failed: its slot frees, its instance is discarded, its request is placed again or fails; after
        ``give_up_after`` failures of one model its requests fail at once."""
        life, inst, m = self.life, job.instance, job.instance.info.name
        life.stats["load_failures"] += 1
        self.load_failures[m] = failures = self.load_failures.get(m, 0) + 1
        if failures >= give_up_after:
            self.given_up[m] = f"model {m} failed to load {failures} times; not retried"
        life.loads.failed(job)
        self._drop(inst)
        if inst.request >= 0 and inst.migration_src is None and life.rec.state[inst.request] == ASSIGNED:
            self.retry_or_fail(inst.request, f"load failed: {reason}", max_retries)
        life.after()

    def serve_failed(self, inst: Instance, version: int, reason: str, max_retries: int) -> None:
        """The process of ``inst`` died: the instance is gone; the request it served is placed again or fails."""
        if version != inst.version or inst.state == "gone":
            return
        i = inst.request if inst.state == "busy" else -1  # else a migration's destination: the migration is off
        inst.request = -1
        self._drop(inst)
        if i >= 0:
            self.retry_or_fail(i, reason, max_retries)
        self.life.after()

    def _drop(self, inst: Instance) -> None:
        """Take a failed instance off its GPUs and end its process; a migration it was part of is off (a source's
        GPUs still go to the placement that asked for them)."""
        self.life.migrations.abort(inst)
        src = inst.migration_src
        if src is not None and src.migrating_to is inst:
            src.migrating_to = None
        if inst.state != "gone":
            self.life.release(inst)
            self.life.backend.released(inst, True)

    def retry_or_fail(self, i: int, reason: str, max_retries: int) -> None:
        """Place request ``i`` again now if it has retries left and time, else it fails with ``reason``."""
        rec = self.life.rec
        m = rec.model_of[i]
        rec.error[i] = reason
        if m in self.given_up:
            self.life.fail(i, f"{reason} ({self.given_up[m]})")
        elif rec.retries[i] < max_retries and not self.life.expired(i):
            rec.retries[i] += 1
            rec.state[i] = ASSIGNED  # decided again now, not queued behind the waiting ones
            self.life.decide(i)
        else:
            self.life.fail(i, reason)
