"""WS-RR: waiting-penalized routing avoids a full server when an idle detour is cheaper."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from placement.base import Placement, SlotView
from placement.ws_rr import WsRrRouter, wait_until_free_s
from tests.placement.conftest import toy_problem


def test_wait_until_free() -> None:
    assert wait_until_free_s(3, (), 2) == 0.0
    assert wait_until_free_s(0, ((5.0, 1), (2.0, 1)), 2) == 5.0
    assert wait_until_free_s(0, ((5.0, 1),), 2) == np.inf


def test_full_fast_server_is_avoided_when_waiting_costs_more() -> None:
    # l_max = 10 so decode times differ: server 0 saves 9 · 2 · 0.049 s ≈ 0.88 s per request.
    problem = replace(toy_problem([10.0, 10.0], [0.001, 0.05], [[0.0, 0.0]], num_blocks=2), max_tokens=10)
    placement = Placement((0, 0), (2, 2), (2, 2))
    idle = WsRrRouter().route(problem, placement, 0, SlotView.idle(placement))
    assert [h.server for h in idle.hops] == [0]
    busy = SlotView((0, 2), (((1000.0, 2),), ()))
    assert [h.server for h in WsRrRouter().route(problem, placement, 0, busy).hops] == [1]
    soon = SlotView((0, 2), (((0.01, 2),), ()))
    assert [h.server for h in WsRrRouter().route(problem, placement, 0, soon).hops] == [0]


def test_negative_delay_is_rejected() -> None:
    with pytest.raises(ValueError, match="allocation_delay_s"):
        WsRrRouter(allocation_delay_s=-1)
