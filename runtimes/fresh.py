"""The ``fresh`` runtime: a new interpreter per cold start (the honest baseline; the executor spawns it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runtimes.base import RuntimeContext


class FreshSource:
    """A new process per acquire; released or discarded ones are closed or killed (nothing is kept)."""

    reuses = False

    def __init__(self, start: Callable[[str], Any], name: str) -> None:
        self._start, self.name = start, name
        self._n = 0
        self.stats: dict[str, Any] = {"starts": 0, "start_s": []}

    def acquire(self, timeout_s: float | None = None) -> tuple[Any, float]:
        t0 = time.monotonic()
        self._n += 1
        handle = self._start(f"{self.name}-f{self._n}")
        took = time.monotonic() - t0
        self.stats["starts"] += 1
        self.stats["start_s"].append(took)
        return handle, took

    def loaded(self, handle: Any) -> None:
        """Nothing to refill."""

    def release(self, handle: Any, reusable: bool) -> None:
        handle.close()

    def discard(self, handle: Any) -> None:
        handle.kill()

    def close(self) -> None:
        """Nothing is held."""


class FreshRuntime:
    """Each trial is ``executor.run_trial``: ``python -m harness.trial`` in a new process (locally or on Ray)."""

    name = "fresh"

    def __init__(self) -> None:
        self._ctx: RuntimeContext | None = None

    def check(self, ctx: RuntimeContext) -> None:
        """Every run can start fresh processes."""

    def start(self, ctx: RuntimeContext) -> None:
        self._ctx = ctx

    def settle(self, timeout_s: float) -> None:
        """Nothing is kept ready."""

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self._ctx is None:
            raise RuntimeError("FreshRuntime.start() was not called")
        out: dict[str, Any] = self._ctx.executor.run_trial(spec, timeout_s)
        return out

    def reusable(self, worker: dict[str, Any]) -> bool:
        return False  # a fresh process serves one cold start

    def host_kwargs(self, ctx: RuntimeContext) -> dict[str, Any]:
        return {}  # the imports are part of every cold start

    def source(self, start: Callable[[str], Any], name: str) -> FreshSource:
        return FreshSource(start, name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def close(self) -> None:
        self._ctx = None
