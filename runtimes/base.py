"""The runtime contract: what every ``conf/runtime/<name>.yaml`` ``_target_`` builds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class RuntimeUnsupportedError(ValueError):
    """The runtime cannot serve this run as configured (``forkserver`` with ``device=cuda``)."""


@dataclass(frozen=True)
class RuntimeContext:
    """What a runtime pre-initializes for: where its processes run, the device, and the run's loaders and models
    (their modules are imported ahead of any cold start)."""

    executor: Any
    device: str = "cpu"
    loaders: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    threads: int | None = None
    dtype: str = "fp16"
    engines: list[dict[str, Any]] = field(default_factory=list)  # the run's engine options (a pool may prepare them)
    prompt_ids: list[int] = field(default_factory=list)  # the fixed prompt (a prepared engine compiles at its length)
    decode_tokens: int = 0


@runtime_checkable
class ProcessSource(Protocol):
    """Hands out ready worker processes hosting one object (a serverless server's model instances).

    ``acquire`` returns a worker and the seconds it took to have one (``fresh``: starting it; ``pool``: waiting for
    a ready one). ``release`` returns a worker whose assignment ended (``reusable``: it may serve another), and
    ``discard`` kills one that must never serve again (a failed load)."""

    stats: dict[str, Any]
    reuses: bool  # whether a released worker may serve again (a pool) or is always closed (fresh)

    def acquire(self, timeout_s: float | None = None) -> tuple[Any, float]: ...

    def loaded(self, handle: Any) -> None:
        """The cold start on ``handle`` is over (a pool may start its replacement now)."""
        ...

    def release(self, handle: Any, reusable: bool) -> None: ...

    def discard(self, handle: Any) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    """Gets a process ready for a cold start and runs one trial in it (``harness.trial.run_trial``).

    ``run_trial`` returns the trial's result, whose ``marks`` start at ``spawn`` (when the caller asked) and
    ``handoff`` (when a ready process held the spec); anything the runtime did before ``spawn`` (a zygote's or a
    pool worker's imports) is reported by ``describe`` and is not part of the cold start.
    """

    name: str

    def check(self, ctx: RuntimeContext) -> None:
        """Refuse, before anything starts, a run this runtime cannot serve (``RuntimeUnsupportedError``)."""
        ...

    def start(self, ctx: RuntimeContext) -> None:
        """Pre-start what the runtime keeps ready (idempotent; ``fresh`` keeps nothing)."""
        ...

    def settle(self, timeout_s: float) -> None:
        """Block until what the runtime keeps ready is ready again (a pool refilled, a dead zygote restarted), so
        no background start competes with the next measured cold start of any runtime."""
        ...

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One cold start; its result, or ``harness.executors.base.TrialError``."""
        ...

    def reusable(self, worker: dict[str, Any]) -> bool:
        """May a worker that reported ``worker`` after unload (idle and after-unload RSS, uses) serve again?"""
        ...

    def host_kwargs(self, ctx: RuntimeContext) -> dict[str, Any]:
        """What a hosted object (``schedulers.real.instance.ModelInstance``) pre-initializes at construction:
        ``modules``, ``models``, ``warmup_dtype`` (empty for ``fresh``: its imports are part of each cold start)."""
        ...

    def source(self, start: Callable[[str], Any], name: str) -> ProcessSource:
        """Where a server gets its instance processes; ``start(name)`` starts one (with :meth:`host_kwargs`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The runtime's knobs and what it did (zygote restarts, pool worker starts and their seconds, recycles)."""
        ...

    def close(self) -> None:
        """Stop every process the runtime started (idempotent)."""
        ...
