"""Fair bandwidth sharing between concurrent reads."""

from __future__ import annotations

import pytest
import simpy

from schedulers.links import FairShareLink


def test_two_flows_share_then_one_speeds_up() -> None:
    env = simpy.Environment()
    link = FairShareLink(env, 10.0)
    done: dict[str, float] = {}
    link.start(10.0, 100.0, lambda: done.setdefault("a", env.now))
    link.start(30.0, 100.0, lambda: done.setdefault("b", env.now))
    env.run()
    assert done["a"] == pytest.approx(2.0)  # 5 B/s each until a is done
    assert done["b"] == pytest.approx(4.0)  # then b gets all 10 B/s for its last 20 B


def test_flow_cap_leaves_bandwidth_to_others() -> None:
    env = simpy.Environment()
    link = FairShareLink(env, 10.0)
    done: dict[str, float] = {}
    link.start(2.0, 1.0, lambda: done.setdefault("slow", env.now))
    link.start(18.0, 100.0, lambda: done.setdefault("fast", env.now))
    env.run()
    assert done["slow"] == pytest.approx(2.0)
    assert done["fast"] == pytest.approx(2.0)  # 9 B/s while the capped flow takes 1 B/s
