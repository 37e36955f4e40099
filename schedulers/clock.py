"""The clocks the serverless lifecycle runs on: ``now``, ``at`` and a thread-safe ``post`` (STYLE 17).

``SimClock`` jumps simulated time from one timer to the next (the simulator, and the real controller driven by
scripted durations in tests); ``WallClock`` waits for wall time to reach each timer and runs what helper threads
post in between (the real controller). One thread runs every callback of a clock, so code driven by it owns its
state without locks; other threads only ``post``.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

Callback = Callable[..., object]


class Clock(Protocol):
    """When things happen: ``now`` in seconds since the run started, ``at`` a callback at a time (on the clock's
    thread, in time order, ties in the order they were asked for), ``post`` a callback as soon as possible (safe
    from any thread)."""

    def now(self) -> float: ...

    def at(self, t: float, fn: Callback, *args: Any) -> None: ...

    def post(self, fn: Callback, *args: Any) -> None: ...


class SimClock:
    """Simulated time: a heap of timers; ``run`` pops them in order and sets ``now`` to each one's time.

    ``at(t)`` fires at ``now + max(t - now, 0)`` (a time already past fires now, after what is due now), the
    arithmetic of SimPy's ``timeout``, so results equal the SimPy simulator's to the last bit. ``after(dt)`` is a
    timer ``dt`` from now (``now + dt``). ``post`` is ``at(now)`` under a lock: a thread other than the runner's
    may post, but simulated time never waits for it, so tests that drive real code with this clock run that code
    on the clock's thread (``InlineWork``).
    """

    __slots__ = ("_heap", "_lock", "_now", "_seq")

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s
        self._heap: list[tuple[float, int, Callback, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def at(self, t: float, fn: Callback, *args: Any) -> None:
        now = self._now
        heapq.heappush(self._heap, (now + max(t - now, 0.0), next(self._seq), fn, args))

    def after(self, dt: float, fn: Callback, *args: Any) -> None:
        heapq.heappush(self._heap, (self._now + dt, next(self._seq), fn, args))

    def post(self, fn: Callback, *args: Any) -> None:
        with self._lock:
            heapq.heappush(self._heap, (self._now, next(self._seq), fn, args))

    def pending(self) -> int:
        """Timers not yet run."""
        return len(self._heap)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Run timers in order until none is left (or ``until()`` says stop, checked after each)."""
        heap, pop = self._heap, heapq.heappop
        while heap:
            t, _, fn, args = pop(heap)
            self._now = t
            fn(*args)
            if until is not None and until():
                return


class WallClock:
    """Wall time since ``start()``: timers wait for their time; ``post`` hands a callback from any thread to the
    loop, which runs it before the next timer that is due."""

    def __init__(self) -> None:
        self._t0 = time.time()
        self._heap: list[tuple[float, int, Callback, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._posted: queue.Queue[tuple[Callback, tuple[Any, ...]]] = queue.Queue()

    def start(self) -> None:
        """Time 0 is now (the run's first arrival is due ``arrival_s`` from here)."""
        self._t0 = time.time()

    def now(self) -> float:
        return time.time() - self._t0

    def at(self, t: float, fn: Callback, *args: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn, args))

    def post(self, fn: Callback, *args: Any) -> None:
        self._posted.put((fn, args))

    def pending(self) -> int:
        """Timers not yet run and callbacks posted but not yet run."""
        return len(self._heap) + self._posted.qsize()

    def run(self, until: Callable[[], bool], idle_s: float = 0.5) -> None:
        """Run posted callbacks and due timers until ``until()``; wait at most ``idle_s`` between checks."""
        while not until():
            wait = min(max(self._heap[0][0] - self.now(), 0.0), idle_s) if self._heap else idle_s
            try:
                fn, args = self._posted.get(timeout=wait)
                fn(*args)
                while True:  # everything posted meanwhile, before any timer
                    fn, args = self._posted.get_nowait()
                    fn(*args)
            except queue.Empty:
                pass
            while self._heap and self._heap[0][0] <= self.now():
                _, _, fn, args = heapq.heappop(self._heap)
                fn(*args)
