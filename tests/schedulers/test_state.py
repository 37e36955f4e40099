"""The per-server pool clock of the ``pool`` runtime in the simulator."""

from __future__ import annotations

import pytest

from schedulers.clock import SimClock
from schedulers.cluster import Cluster, RuntimeTimes
from schedulers.poolclock import WorkerPoolClock
from schedulers.simulator import SimBackend


def test_a_ready_worker_is_handed_out_at_once_and_its_replacement_starts_then() -> None:
    clock = WorkerPoolClock(size=2, worker_start_s=10.0)
    assert clock.acquire(3.0) == 3.0
    assert clock.ready_at() == [0.0, 13.0]  # one still ready, the replacement ready 10 s after the hand-out
    assert clock.acquire(4.0) == 4.0
    assert clock.ready_at() == [13.0, 23.0]  # the second replacement starts when the first one is done


def test_an_empty_pool_makes_the_cold_start_wait_for_the_next_ready_worker() -> None:
    clock = WorkerPoolClock(size=1, worker_start_s=10.0)
    assert clock.acquire(0.0) == 0.0
    assert clock.acquire(1.0) == 10.0  # none ready: it waits for the replacement started at t=0
    assert clock.acquire(2.0) == 20.0  # and the next one for the replacement started at t=10


def test_replacements_start_one_at_a_time() -> None:
    clock = WorkerPoolClock(size=3, worker_start_s=5.0)
    got = [clock.acquire(0.0) for _ in range(3)]
    assert got == [0.0, 0.0, 0.0]
    assert clock.ready_at() == [5.0, 10.0, 15.0]  # not three starts in parallel
    assert clock.acquire(30.0) == 30.0  # an idle pool refilled long ago hands out at once
    assert clock.ready_at() == [10.0, 15.0, 35.0]


def test_a_replacement_starts_no_earlier_than_its_hand_out() -> None:
    clock = WorkerPoolClock(size=1, worker_start_s=2.0)
    clock.acquire(0.0)
    assert clock.acquire(100.0) == 100.0
    assert clock.ready_at() == [102.0]


def test_servers_get_a_pool_clock_only_under_the_pool_runtime() -> None:
    assert SimBackend(SimClock(), Cluster()).pools is None
    pools = SimBackend(SimClock(), Cluster(servers=2, runtime=RuntimeTimes("pool", pool_size=2,
                                                                           worker_start_s=4.0))).pools
    assert pools is not None
    assert len(pools) == 2
    assert pools[0].ready_at() == [0.0, 0.0]
    with pytest.raises(ValueError, match="pool_size"):
        WorkerPoolClock(size=0, worker_start_s=1.0)


def test_a_worker_given_back_is_ready_again_only_while_the_pool_is_short() -> None:
    clock = WorkerPoolClock(size=1, worker_start_s=10.0)
    assert clock.acquire(0.0) == 0.0  # the replacement is ready at 10
    assert clock.give_back(4.0)  # an instance unloaded at 4: fewer than size ready, its worker stays
    assert clock.acquire(5.0) == 5.0  # so a cold start at 5 does not wait for the replacement
    assert clock.acquire(6.0) == 10.0  # the next one does
    assert not clock.give_back(30.0)  # the replacement started at 10 was ready at 20: the pool is full
    assert clock.ready_at() == [20.0]
    full = WorkerPoolClock(size=1, worker_start_s=10.0)
    assert not full.give_back(1.0)  # a full pool closes what comes back
    assert full.ready_at() == [0.0]


def test_with_refill_after_load_the_replacement_starts_when_the_cold_start_is_loaded() -> None:
    clock = WorkerPoolClock(size=1, worker_start_s=10.0, refill_after_load=True)
    assert clock.acquire(0.0) == 0.0
    assert clock.ready_at() == []  # nothing starts while the cold start loads
    clock.loaded(2.0)
    assert clock.ready_at() == [12.0]  # its replacement starts when it is loaded
    assert clock.acquire(5.0) == 12.0
    clock.loaded(12.5)
    assert clock.acquire(13.0) == 22.5
