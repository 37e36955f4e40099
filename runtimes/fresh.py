"""The ``fresh`` runtime: a new interpreter per cold start (the honest baseline; the executor spawns it)."""

from __future__ import annotations

from typing import Any

from runtimes.base import RuntimeContext


class FreshRuntime:
    """Each trial is ``executor.run_trial``: ``python -m harness.trial`` in a new process (locally or on Ray)."""

    name = "fresh"

    def __init__(self) -> None:
        self._ctx: RuntimeContext | None = None

    def start(self, ctx: RuntimeContext) -> None:
        self._ctx = ctx

    def settle(self, timeout_s: float) -> None:
        """Nothing is kept ready."""

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self._ctx is None:
            raise RuntimeError("FreshRuntime.start() was not called")
        out: dict[str, Any] = self._ctx.executor.run_trial(spec, timeout_s)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def close(self) -> None:
        self._ctx = None
