"""The ``pool`` runtime in simulated time: when each server's pre-started workers are ready
(``runtimes/workerpool.py``'s refill rule, one start at a time)."""

from __future__ import annotations

import heapq


class WorkerPoolClock:
    """When a server's ``pool`` runtime has ready workers (``runtimes/workerpool.py`` in simulated time).

    ``size`` workers are ready at t=0. One refill thread starts a worker (``worker_start_s``) whenever fewer than
    ``size`` are ready and none is starting, one at a time; a handed-out worker's replacement is due at once,
    or with ``refill_after_load`` once :meth:`loaded` says its cold start is over (the real pool's ``refill``).
    ``acquire(now)`` hands out a ready worker, or waits for the one starting. ``give_back(now)`` is an instance
    leaving its worker after unload (an eviction, a finished migration source): it is ready again if fewer than
    ``size`` are
    (``WorkerPool.release``; the simulator takes every worker as reusable, as the pool's RSS rule finds them on CPU),
    else it is closed. A killed instance's worker (a preemption) never comes back.
    """

    __slots__ = ("_held", "_idle", "_starting_until", "refill_after_load", "size", "worker_start_s")

    def __init__(self, size: int, worker_start_s: float, refill_after_load: bool = False) -> None:
        if size < 1:
            raise ValueError(f"cluster.runtime.pool_size={size!r} is not allowed; it must be ≥ 1")
        self.size, self.worker_start_s, self.refill_after_load = size, worker_start_s, refill_after_load
        self._idle = [0.0] * size  # when each ready worker became ready (a heap)
        self._starting_until: float | None = None  # when the worker being started is ready
        self._held = 0  # handed out, replacement deferred until loaded() (refill_after_load)

    def _advance(self, now_s: float) -> None:
        """Finish the starts that end by ``now_s``; each starts the next while fewer than ``size`` are ready."""
        while self._starting_until is not None and self._starting_until <= now_s:
            done = self._starting_until
            heapq.heappush(self._idle, done)
            self._starting_until = done + self.worker_start_s if self._short() else None

    def _short(self) -> bool:
        return len(self._idle) + self._held < self.size

    def _refill_from(self, t: float) -> None:
        if self._starting_until is None and self._short():
            self._starting_until = t + self.worker_start_s

    def ready_at(self) -> list[float]:
        """When each of ``size`` workers is (or, if nothing is handed out meanwhile, will be) ready."""
        out = sorted(self._idle)
        t = self._starting_until
        while t is not None and len(out) + self._held < self.size:
            out.append(t)
            t += self.worker_start_s
        return out

    def acquire(self, now_s: float) -> float:
        """Take a worker for a cold start that asks at ``now_s``; returns when it has one (≥ ``now_s``)."""
        self._advance(now_s)
        got = now_s
        if not self._idle:
            if self._starting_until is None:  # every worker is held by a cold start still loading (only with
                self._starting_until = now_s + self.worker_start_s  # several load slots): start one now
            got = self._starting_until
            self._advance(got)
        heapq.heappop(self._idle)
        if self.refill_after_load:
            self._held += 1
        else:
            self._refill_from(got)
        return got

    def loaded(self, now_s: float) -> None:
        """The cold start that took a worker is loaded at ``now_s``: with ``refill_after_load`` its replacement
        starts now (one at a time)."""
        if self.refill_after_load and self._held:
            self._advance(now_s)
            self._held -= 1
            self._refill_from(now_s)

    def give_back(self, now_s: float) -> bool:
        """An instance left its worker at ``now_s``: True if the worker is ready again (fewer than ``size`` were)."""
        self._advance(now_s)
        if len(self._idle) >= self.size:
            return False
        heapq.heappush(self._idle, now_s)
        return True
