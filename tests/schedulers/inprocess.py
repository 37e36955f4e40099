"""A test executor whose workers are objects in this process, each with its own call thread.

The controller's decisions (preemption, pre-warming, keep-alive expiry, demotion) do not depend on where an
instance runs, so these tests drive the real ``Controller`` and real ``ModelInstance`` objects without paying a
fresh interpreter and the torch import per cold start. ``kill`` makes the handle dead at once: the call in
progress and every later one fail with ``WorkerDiedError``, as a killed process's would. Cold starts through
this executor are not measurements (no process start); the process-level behaviour is tested with
``executor=local`` and ``executor=ray`` elsewhere.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from harness.executors.base import TrialError
from harness.executors.workers import (
    WorkerCallError,
    WorkerDiedError,
    build_target,
    call_with_timeout,
    invoke,
)


class InProcessWorker:
    """A ``WorkerHandle`` over an object built in this process."""

    _pids = itertools.count(1_000_000)

    def __init__(self, target: str, kwargs: dict[str, Any], name: str, delay_s: dict[str, float]) -> None:
        self.name, self._delay_s = name, delay_s
        self._obj = build_target(target, kwargs)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"inproc-{name}")
        self._dead: str | None = None
        self._pid = next(self._pids)
        self._lock = threading.Lock()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._dead:
            fut: Future[Any] = Future()
            fut.set_exception(WorkerDiedError(f"worker {self.name!r} is gone ({self._dead})"))
            return fut
        return self._pool.submit(self._run, method, args, kwargs)

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        time.sleep(self._delay_s.get(method, 0.0))
        status, value = invoke(self._obj, method, args, kwargs)
        if self._dead:  # killed while the call ran: its answer never arrives
            raise WorkerDiedError(f"worker {self.name!r} is gone ({self._dead})")
        if status == "err":
            raise WorkerCallError(self.name, method, *value)
        return value

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return call_with_timeout(self.name, method, self.submit(method, *args, **kwargs), timeout_s)

    def alive(self) -> bool:
        return self._dead is None

    def pid(self) -> int | None:
        return self._pid

    def kill(self) -> None:
        self._stop("killed")

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop("closed")

    def _stop(self, why: str) -> None:
        with self._lock:
            if self._dead is not None:
                return
            self._dead = why
        self._pool.shutdown(wait=False, cancel_futures=True)
        # What a real worker's end frees with its process (its host arena): this "process" is the test's own.
        close = getattr(self._obj, "close", None)
        if callable(close):
            close()


class InProcessExecutor:
    """Hosts workers in this process; records every handle it made, its kwargs and the resources it asked for.
    ``delay_s`` adds a sleep before each call of the named methods (e.g. ``{"step": 0.02}`` for slow decoding)."""

    def __init__(self, delay_s: dict[str, float] | None = None, nodes: list[str] | None = None) -> None:
        self.delay_s = dict(delay_s or {})
        self._nodes = list(nodes or [])
        self.started: list[tuple[str, dict[str, Any], InProcessWorker]] = []
        self.resources: dict[str, dict[str, float] | None] = {}  # worker name → the resources it asked for

    def nodes(self) -> list[str]:
        """Pretend node resources (as ``RayExecutor.nodes``), so the pinning of servers can be checked."""
        return list(self._nodes)

    def start_worker(self, target: str, kwargs: dict[str, Any], *, name: str, num_cpus: float = 1,
                     memory_bytes: int | None = None, env: dict[str, str] | None = None, num_gpus: float = 0,
                     resources: dict[str, float] | None = None, max_concurrency: int = 1) -> InProcessWorker:
        worker = InProcessWorker(target, kwargs, name, self.delay_s)
        self.started.append((name, dict(kwargs), worker))
        self.resources[name] = None if resources is None else dict(resources)
        return worker

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        raise TrialError("InProcessExecutor hosts workers only; trials need a fresh process")

    def connect(self) -> None:
        """Nothing to connect to."""

    def close(self) -> None:
        for _, _, w in self.started:
            w.close()
