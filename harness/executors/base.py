"""The executor contract: trials in fresh processes, long-lived workers, and the nodes they may be pinned to."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from harness.executors.workers import WorkerHandle


class TrialError(RuntimeError):
    """A trial process crashed, hung past its timeout or wrote no result; the message carries its stderr."""


@runtime_checkable
class Executor(Protocol):
    """What every ``conf/executor/<name>.yaml`` ``_target_`` builds (``local``: subprocesses; ``ray``: a cluster)."""

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Run one cold-start trial spec in a fresh process; its result, or a :class:`TrialError`."""
        ...

    def start_worker(self, target: str, kwargs: dict[str, Any], *, name: str, num_cpus: float = 1,
                     memory_bytes: int | None = None, env: dict[str, str] | None = None, num_gpus: float = 0,
                     resources: dict[str, float] | None = None, max_concurrency: int = 1) -> WorkerHandle:
        """A long-lived worker hosting ``target`` (``"module:Class"``) built with ``kwargs``."""
        ...

    def nodes(self) -> list[str]:
        """The nodes workers can be pinned to (``node:IP`` resources of a Ray cluster); empty on one machine."""
        ...

    def connect(self) -> None:
        """Connect now, from the calling thread (Ray's init must run in the main thread); a no-op locally."""
        ...

    def close(self) -> None:
        """Release what the executor holds (a Ray connection it started); idempotent."""
        ...
