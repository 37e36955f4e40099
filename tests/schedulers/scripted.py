"""Fakes that let the real controller run in simulated time: instance processes whose calls take scripted durations
(the simulator's model of them), work done inline, tier agents that move no files.

With a ``SimClock`` and these, ``schedulers.real.controller.Controller`` runs its real backend (loads through the
process source, serving and migration rounds call by call, storage reconciled) and the shared lifecycle on the
same trace as the ``Simulator`` — deterministically, since every answer is a timer on the one clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from schedulers.base import ModelInfo
from schedulers.clock import SimClock
from schedulers.cluster import Cluster


class InlineWork:
    """``submit`` runs the function now, on the caller's (the clock's) thread; its future is done already."""

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Nothing runs in the background."""


class NoFilesAgent:
    """A tier agent that records the file operations it is asked for and does none."""

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> None:
        self.ops.append((method, *args))

    def close(self, timeout_s: float = 10.0) -> None:
        pass


class ScriptedHandle:
    """An instance process whose calls answer after the simulator's durations for the same work:

    ``load``: the model's start-up, then its bytes at the tier's bandwidth (a path under the downloads directory
    is a remote load; a loader with a DRAM tier reads DRAM; else the SSD); ``begin``: the prefill of the prompt;
    ``step``: one decode time per token; ``adopt``: the prefill of the tokens it did not have (at least one).
    """

    _pids = itertools.count(2_000_000)

    def __init__(self, clock: SimClock, models: Mapping[str, ModelInfo], cluster: Cluster, name: str) -> None:
        self.clock, self.models, self.cluster, self.name = clock, models, cluster, name
        self.model: ModelInfo | None = None
        self.adopted: dict[int, int] = {}
        self.dead = False
        self.calls: list[str] = []
        self._pid = next(self._pids)

    def submit(self, method: str, *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self.calls.append(method)
        getattr(self, f"_{method}")(fut, *args)
        return fut

    def _answer(self, fut: Future[Any], after_s: float, value: Any) -> None:
        self.clock.after(after_s, fut.set_result, value)

    def _load(self, fut: Future[Any], path: str, loader: dict[str, Any], model: dict[str, Any],
              engine: dict[str, Any] | None = None, prompt_tokens: int = 16) -> None:
        info = self.models[str(model["name"])]
        tier = "remote" if "/.download/" in path else "dram" if loader.get("dram_dir") else "ssd"
        gbps = {"dram": self.cluster.dram_gbps, "ssd": self.cluster.ssd_gbps, "remote": self.cluster.remote_gbps}
        self.model = info
        phases = {"imports_s": 0.0, "device_init_s": 0.0, "weights_s": 0.0, "model_build_s": 0.0,
                  "bytes": info.size_bytes, "bytes_by_tier": {tier: info.size_bytes}, "uses": 1}
        # as the simulator times it: the start-up, then the bytes (two timers, the same arithmetic)
        self.clock.after(info.startup_s, self._answer, fut, info.size_bytes / (gbps[tier] * 1e9), phases)

    def _begin(self, fut: Future[Any], rid: int, prompt: list[int]) -> None:
        assert self.model is not None
        dt = self.model.prefill_s(len(prompt))
        self.adopted[rid] = len(prompt)
        self._answer(fut, dt, {"tokens": [rid % 997], "offsets_s": [dt]})

    def _step(self, fut: Future[Any], rid: int, n: int) -> None:
        assert self.model is not None
        d = self.model.decode_s_per_token
        self._answer(fut, n * d, {"tokens": [rid % 997] * n, "offsets_s": [d * (k + 1) for k in range(n)]})

    def _adopt(self, fut: Future[Any], rid: int, ids: list[int]) -> None:
        assert self.model is not None
        todo = len(ids) - self.adopted.get(rid, 0)
        self.adopted[rid] = len(ids)
        self._answer(fut, self.model.prefill_s(max(todo, 1)), {"prefilled": todo, "s": 0.0})

    def _finish(self, fut: Future[Any], rid: int) -> None:
        self.adopted.pop(rid, None)
        fut.set_result(None)

    def _unload(self, fut: Future[Any]) -> None:
        self.model = None
        fut.set_result({"idle_rss_bytes": 1, "rss_after_unload_bytes": 1, "uses": 1})

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        return self.submit(method, *args).result(timeout=0)

    def alive(self) -> bool:
        return not self.dead

    def pid(self) -> int:
        return self._pid

    def kill(self) -> None:
        self.dead = True

    def close(self, timeout_s: float = 10.0) -> None:
        self.dead = True


class ScriptedExecutor:
    """Starts ``ScriptedHandle`` workers (what ``harness.executors.workers.start_worker`` asks an executor for)."""

    def __init__(self, clock: SimClock, models: Mapping[str, ModelInfo], cluster: Cluster) -> None:
        self.clock, self.models, self.cluster = clock, models, cluster
        self.started: list[ScriptedHandle] = []

    def start_worker(self, target: str, kwargs: dict[str, Any], *, name: str, **_: Any) -> ScriptedHandle:
        handle = ScriptedHandle(self.clock, self.models, self.cluster, name)
        self.started.append(handle)
        return handle

    def nodes(self) -> list[str]:
        return []


def no_files_root() -> Path:
    """Where the fake sites' directories are said to be (nothing is written there)."""
    return Path("/nonexistent/coldstart-scripted")
