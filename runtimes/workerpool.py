"""A pool of pre-started workers hosting one object each, refilled in the background.

``WorkerPool(start, size)`` keeps ``size`` ready workers: ``start(name)`` starts one (a process or actor whose
construction did the imports and created the device context) and returns its handle. ``acquire`` hands out a ready
worker (waiting for a refill when none is ready) and the seconds it waited; ``release`` takes it back when it may
serve again, otherwise it is closed; ``discard`` kills it. A worker found dead while idle is replaced; a start that
fails is counted and retried after a pause (``start_failures``), and ``acquire`` raises once ``max_start_failures``
starts in a row failed. One refill thread starts workers one at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("coldstart.runtimes")

CHECK_PERIOD_S = 0.5


class PoolError(RuntimeError):
    """No worker could be had: starts keep failing (the message has the last error), or the pool is closed."""


class WorkerPool:
    """``size`` ready workers made by ``start``; see the module docstring."""

    reuses = True

    def __init__(self, start: Callable[[str], Any], size: int, *, name: str = "pool",
                 max_start_failures: int = 3, retry_pause_s: float = 1.0, refill_on_acquire: bool = True,
                 refill_after_load: bool = False) -> None:
        if size < 1:
            raise ValueError(f"pool size={size}; it must be ≥ 1")
        self._start, self.size, self.name = start, int(size), name
        self.refill_on_acquire = bool(refill_on_acquire)
        self.refill_after_load = bool(refill_after_load)
        self._held: set[int] = set()  # handed out, replacement deferred until loaded() (refill_after_load)
        self.max_start_failures, self.retry_pause_s = int(max_start_failures), float(retry_pause_s)
        self._ready: deque[Any] = deque()
        self._busy: set[int] = set()
        self._cv = threading.Condition()
        self._closed = False
        self._starting = False
        self._failures_in_a_row = 0
        self._last_error = ""
        self._names = itertools.count()
        self.stats: dict[str, Any] = {"starts": 0, "start_failures": 0, "replaced_dead": 0, "recycled": 0,
                                      "reused": 0, "discarded": 0, "acquired": 0, "start_s": []}
        self._thread = threading.Thread(target=self._refill_loop, name=f"{name}-refill", daemon=True)
        self._thread.start()

    # -- API ---------------------------------------------------------------------------------------------------
    def acquire(self, timeout_s: float | None = None) -> tuple[Any, float]:
        """A ready worker, and the seconds spent waiting for one (0 when the pool had one ready)."""
        t0 = time.monotonic()
        deadline = None if timeout_s is None else t0 + timeout_s
        with self._cv:
            while True:
                if self._closed:
                    raise PoolError(f"{self.name}: the pool is closed")
                while self._ready:
                    handle = self._ready.popleft()
                    if handle.alive():
                        self._busy.add(id(handle))
                        if self.refill_after_load:
                            self._held.add(id(handle))
                        self.stats["acquired"] += 1
                        self._cv.notify_all()  # the refill thread starts a replacement
                        return handle, time.monotonic() - t0
                    self.stats["replaced_dead"] += 1
                    log.warning("%s: worker %s died while idle; replacing it", self.name, handle.name)
                if self._failures_in_a_row >= self.max_start_failures:
                    raise PoolError(f"{self.name}: {self._failures_in_a_row} worker starts in a row failed; "
                                    f"last error: {self._last_error}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PoolError(f"{self.name}: no ready worker within {timeout_s:g} s")
                self._cv.wait(CHECK_PERIOD_S if left is None else min(left, CHECK_PERIOD_S))

    def loaded(self, handle: Any) -> None:
        """The cold start on ``handle`` is over (loaded, or failed): with ``refill_after_load`` its replacement
        starts now, so a process start never shares the machine with the cold start it replaces."""
        with self._cv:
            if id(handle) in self._held:
                self._held.discard(id(handle))
                self._cv.notify_all()

    def release(self, handle: Any, reusable: bool) -> None:
        """Take back a worker that finished its assignment: ready again if ``reusable`` (and the pool is not over
        size), otherwise closed and replaced."""
        with self._cv:
            self._busy.discard(id(handle))
            self._held.discard(id(handle))
            keep = reusable and not self._closed and handle.alive() and len(self._ready) < self.size
            if keep:
                self._ready.append(handle)
                self.stats["reused"] += 1
                self._cv.notify_all()
                return
            self.stats["recycled"] += 1
            self._cv.notify_all()  # the refill thread starts its replacement now, not at its next check
        _quietly(handle.close)

    def discard(self, handle: Any) -> None:
        """Kill a worker that must not serve again (a failed load, a timeout); a replacement starts."""
        with self._cv:
            self._busy.discard(id(handle))
            self._held.discard(id(handle))
            self.stats["discarded"] += 1
            self._cv.notify_all()
        _quietly(handle.kill)

    def ready(self) -> int:
        with self._cv:
            return len(self._ready)

    def wait_full(self, timeout_s: float | None = None) -> None:
        """Block until ``size`` workers are ready (raises ``PoolError`` when starts keep failing or time runs out)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while len(self._ready) < self.size:
                if self._closed:
                    raise PoolError(f"{self.name}: the pool is closed")
                if self._failures_in_a_row >= self.max_start_failures:
                    raise PoolError(f"{self.name}: {self._failures_in_a_row} worker starts in a row failed; "
                                    f"last error: {self._last_error}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PoolError(f"{self.name}: {len(self._ready)} of {self.size} workers ready after "
                                    f"{timeout_s:g} s")
                self._cv.wait(CHECK_PERIOD_S if left is None else min(left, CHECK_PERIOD_S))

    def close(self) -> None:
        """Stop refilling and close every idle worker (workers handed out are their holders' to close)."""
        with self._cv:
            self._closed = True
            idle = list(self._ready)
            self._ready.clear()
            self._cv.notify_all()
        for handle in idle:
            _quietly(handle.close)
        self._thread.join(timeout=30)

    # -- the refill thread -------------------------------------------------------------------------------------
    def _refill_loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._want_start():
                    self._cv.wait(CHECK_PERIOD_S)
                    self._drop_dead()
                if self._closed:
                    return
                self._starting = True
            name = f"{self.name}-w{next(self._names)}"
            t0 = time.monotonic()
            try:
                handle = self._start(name)
            except Exception as exc:  # counted; the pool tries again after a pause
                with self._cv:
                    self._starting = False
                    self.stats["start_failures"] += 1
                    self._failures_in_a_row += 1
                    self._last_error = f"{type(exc).__name__}: {str(exc)[:500]}"
                    self._cv.notify_all()
                log.error("%s: starting worker %s failed: %s", self.name, name, self._last_error)
                time.sleep(self.retry_pause_s)
                continue
            took = time.monotonic() - t0
            with self._cv:
                self._starting = False
                if self._closed:
                    _quietly(handle.close)
                    return
                self._failures_in_a_row = 0
                self.stats["starts"] += 1
                self.stats["start_s"].append(took)
                self._ready.append(handle)
                self._cv.notify_all()

    def _want_start(self) -> bool:
        """Start one more when fewer than ``size`` are ready. With ``refill_on_acquire`` a handed-out worker's
        replacement starts at once (the next cold start finds one ready), or with ``refill_after_load`` once its
        cold start is :meth:`loaded`; without, only once it is released or discarded (a measurement that must not
        share the CPU with a start)."""
        if self._failures_in_a_row >= self.max_start_failures:
            return False
        have = len(self._ready) + (len(self._held) if self.refill_on_acquire else len(self._busy))
        return have < self.size

    def _drop_dead(self) -> None:
        """Under the lock: replace idle workers that died (killed, out of memory) before anyone asks for them."""
        alive = deque(h for h in self._ready if h.alive())
        if len(alive) != len(self._ready):
            self.stats["replaced_dead"] += len(self._ready) - len(alive)
            self._ready = alive


def _quietly(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()
