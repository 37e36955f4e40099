"""Fair bandwidth sharing between concurrent reads."""

from __future__ import annotations

import pytest

from schedulers.clock import SimClock
from schedulers.links import FairShareLink


def test_two_flows_share_then_one_speeds_up() -> None:
    clock = SimClock()
    link = FairShareLink(clock, 10.0)
    done: dict[str, float] = {}
    link.start(10.0, 100.0, lambda: done.setdefault("a", clock.now()))
    link.start(30.0, 100.0, lambda: done.setdefault("b", clock.now()))
    clock.run()
    assert done["a"] == pytest.approx(2.0)  # 5 B/s each until a is done
    assert done["b"] == pytest.approx(4.0)  # then b gets all 10 B/s for its last 20 B


def test_flow_cap_leaves_bandwidth_to_others() -> None:
    clock = SimClock()
    link = FairShareLink(clock, 10.0)
    done: dict[str, float] = {}
    link.start(2.0, 1.0, lambda: done.setdefault("slow", clock.now()))
    link.start(18.0, 100.0, lambda: done.setdefault("fast", clock.now()))
    clock.run()
    assert done["slow"] == pytest.approx(2.0)
    assert done["fast"] == pytest.approx(2.0)  # 9 B/s while the capped flow takes 1 B/s
