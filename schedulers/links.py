"""Fair bandwidth sharing for concurrent reads from one tier (processor sharing, each flow capped at its own
rate)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schedulers.clock import SimClock

EPS_BYTES = 1.0


@dataclass
class Flow:
    """One transfer in progress: bytes left, its own rate cap (bytes/s), and what to call when it is done."""

    remaining: float
    cap_bps: float
    on_done: Callable[[], object]
    rate_bps: float = 0.0


class FairShareLink:
    """A link of ``capacity_bps`` shared equally by its active flows; a flow never goes above its own cap.

    Rates are recomputed whenever a flow starts or ends (water-filling over the caps); one pending timer with
    a
    version number stands for the next completion, so stale timers are ignored rather than cancelled.
    """

    def __init__(self, clock: SimClock, capacity_bps: float) -> None:
        self.clock = clock
        self.capacity_bps = capacity_bps
        self.flows: list[Flow] = []
        self._last = 0.0
        self._version = 0

    def start(self, nbytes: float, cap_bps: float, on_done: Callable[[], object]) -> None:
        """Begin moving ``nbytes``; ``on_done`` runs at the simulated time the last byte arrives."""
        self._advance()
        self.flows.append(Flow(float(nbytes), cap_bps, on_done))
        self._reschedule()

    def _advance(self) -> None:
        now = self.clock.now()
        dt = now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate_bps * dt
        self._last = now

    def _rates(self) -> None:
        # Water-filling: flows whose cap is below the equal share keep their cap; the rest split what is left.
        left = self.capacity_bps
        todo = sorted(self.flows, key=lambda f: f.cap_bps)
        for i, f in enumerate(todo):
            share = left / (len(todo) - i)
            f.rate_bps = min(f.cap_bps, share)
            left -= f.rate_bps

    def _reschedule(self) -> None:
        self._version += 1
        if not self.flows:
            return
        self._rates()
        dt = min(max(f.remaining, 0.0) / f.rate_bps for f in self.flows)
        self.clock.after(dt, self._fire, self._version)

    def _fire(self, version: int) -> None:
        if version != self._version:
            return
        self._advance()
        done = [f for f in self.flows if f.remaining <= EPS_BYTES]
        self.flows = [f for f in self.flows if f.remaining > EPS_BYTES]
        self._reschedule()
        for f in done:
            f.on_done()
