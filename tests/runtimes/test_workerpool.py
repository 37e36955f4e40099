"""WorkerPool with fake handles (no processes): hand-out, reuse and recycling, refill timing, dead idle workers,
start failures, close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from runtimes.workerpool import PoolError, WorkerPool
from tests.runtimes.fakes import FakeStarter, wait_until

QUIET_S = 0.6  # longer than the refill thread's check period: what did not start by then is not going to


@pytest.fixture
def pools() -> Iterator[list[WorkerPool]]:
    """Pools a test makes; each is closed at its end, whatever the test did."""
    made: list[WorkerPool] = []
    yield made
    for pool in made:
        pool.close()


def _pool(pools: list[WorkerPool], starter: FakeStarter, size: int = 1, **kwargs: object) -> WorkerPool:
    pool = WorkerPool(starter, size, name="t", retry_pause_s=0.01, **kwargs)  # type: ignore[arg-type]
    pools.append(pool)
    return pool


def _refill_thread_running(pool: WorkerPool) -> bool:
    return any(t.name == f"{pool.name}-refill" and t.is_alive() for t in threading.enumerate())


def test_a_released_worker_is_reused_and_a_recycled_one_replaced(pools: list[WorkerPool]) -> None:
    starter = FakeStarter()
    pool = _pool(pools, starter, refill_on_acquire=False)
    pool.wait_full(10)
    first, waited = pool.acquire(10)
    assert waited < 1.0
    pool.release(first, reusable=True)
    again, _ = pool.acquire(10)
    assert again is first  # the same worker served twice
    assert first.closed == 0
    pool.release(again, reusable=False)
    assert first.closed == 1  # recycled: closed, never handed out again
    pool.wait_full(10)
    third, _ = pool.acquire(10)
    assert third is not first
    assert third is starter.handles[1]
    pool.release(third, reusable=True)
    assert pool.stats["starts"] == 2
    assert (pool.stats["acquired"], pool.stats["reused"], pool.stats["recycled"]) == (3, 2, 1)
    assert pool.stats["start_failures"] == pool.stats["replaced_dead"] == pool.stats["discarded"] == 0
    assert len(pool.stats["start_s"]) == 2


def test_refill_on_acquire_starts_a_replacement_while_the_worker_is_busy(pools: list[WorkerPool]) -> None:
    starter = FakeStarter()
    pool = _pool(pools, starter, refill_on_acquire=True)
    pool.wait_full(10)
    held, _ = pool.acquire(10)
    assert wait_until(lambda: pool.ready() == 1)  # the next cold start finds one ready
    assert starter.started() == 2
    pool.release(held, reusable=True)  # the pool is full: a worker beyond its size is closed, not kept
    assert held.closed == 1
    assert pool.ready() == 1
    assert pool.stats["recycled"] == 1


def test_without_refill_on_acquire_no_start_runs_while_a_worker_is_busy(pools: list[WorkerPool]) -> None:
    starter = FakeStarter()
    pool = _pool(pools, starter, refill_on_acquire=False)
    pool.wait_full(10)
    held, _ = pool.acquire(10)
    time.sleep(QUIET_S)
    assert starter.started() == 1  # nothing shares the CPU with the measured trial
    assert pool.ready() == 0
    pool.discard(held)  # a failed trial: the worker is killed, then replaced
    assert held.killed == 1
    assert wait_until(lambda: pool.ready() == 1)
    assert starter.started() == 2
    assert pool.stats["discarded"] == 1


def test_a_worker_found_dead_while_idle_is_replaced(pools: list[WorkerPool]) -> None:
    starter = FakeStarter()
    pool = _pool(pools, starter, size=2)
    pool.wait_full(10)
    victim = starter.handles[0]
    victim.die()  # killed while idle, e.g. by the OOM killer
    assert wait_until(lambda: pool.stats["replaced_dead"] == 1 and pool.ready() == 2)
    assert starter.started() == 3
    got = [pool.acquire(10)[0], pool.acquire(10)[0]]
    assert victim not in got
    assert all(h.alive() for h in got)
    assert pool.stats["replaced_dead"] == 1  # counted once, by whoever met it first (acquire or the refill thread)


def test_starts_failing_in_a_row_raise_pool_error_with_the_last_error(pools: list[WorkerPool]) -> None:
    starter = FakeStarter(fail_always=True)
    pool = _pool(pools, starter, max_start_failures=3)
    with pytest.raises(PoolError, match=r"3 worker starts in a row failed; last error: OSError: no memory for t-w2"):
        pool.acquire(30)
    with pytest.raises(PoolError, match="in a row failed"):
        pool.wait_full(30)
    time.sleep(QUIET_S)
    assert len(starter.calls) == 3  # it gave up: no endless restarts
    assert pool.stats["start_failures"] == 3
    assert pool.stats["starts"] == 0


def test_a_start_that_succeeds_resets_the_failure_count(pools: list[WorkerPool]) -> None:
    starter = FakeStarter(fail_first=2)
    pool = _pool(pools, starter, max_start_failures=3)
    pool.wait_full(30)
    handle, _ = pool.acquire(10)
    assert handle is starter.handles[0]
    assert (pool.stats["start_failures"], pool.stats["starts"]) == (2, 1)


def test_acquire_and_wait_full_time_out_while_a_start_hangs(pools: list[WorkerPool]) -> None:
    starter = FakeStarter()
    starter.gate.clear()
    pool = _pool(pools, starter)
    t0 = time.monotonic()
    with pytest.raises(PoolError, match=r"no ready worker within 0\.3 s"):
        pool.acquire(0.3)
    with pytest.raises(PoolError, match=r"0 of 1 workers ready after 0\.3 s"):
        pool.wait_full(0.3)
    assert time.monotonic() - t0 < 5
    starter.gate.set()
    pool.wait_full(10)


def test_close_closes_idle_workers_and_stops_refilling(pools: list[WorkerPool]) -> None:
    starter = FakeStarter()
    pool = _pool(pools, starter, size=2, refill_on_acquire=False)
    pool.wait_full(10)
    held, _ = pool.acquire(10)
    idle = next(h for h in starter.handles if h is not held)
    pool.close()
    assert idle.closed == 1
    assert held.closed == 0  # a handed-out worker is its holder's to close
    assert not _refill_thread_running(pool)
    with pytest.raises(PoolError, match="closed"):
        pool.acquire(1)
    pool.release(held, reusable=True)  # released after close: closed, not kept
    assert held.closed == 1
    assert pool.ready() == 0
    time.sleep(QUIET_S)
    assert starter.started() == 2  # no refill after close


def test_a_start_finishing_after_close_is_closed() -> None:
    starter = FakeStarter()
    starter.gate.clear()
    pool = WorkerPool(starter, 1, name="late")
    assert starter.entered.wait(10)
    closer = threading.Thread(target=pool.close)
    closer.start()
    time.sleep(0.2)
    starter.gate.set()  # the start under way returns after close
    closer.join(10)
    assert not closer.is_alive()
    assert [h.closed for h in starter.handles] == [1]
    assert pool.ready() == 0
    assert not _refill_thread_running(pool)


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="pool size=0"):
        WorkerPool(FakeStarter(), 0)


def test_refill_after_load_starts_the_replacement_only_once_loaded() -> None:
    starter = FakeStarter()
    pool = WorkerPool(starter, 1, name="t", refill_on_acquire=True, refill_after_load=True, retry_pause_s=0.01)
    try:
        pool.wait_full(5)
        handle, _ = pool.acquire(5)
        time.sleep(0.8)  # more than the refill thread's check period
        assert starter.started() == 1  # no replacement while the cold start loads
        pool.loaded(handle)
        pool.wait_full(5)
        assert starter.started() == 2
    finally:
        pool.close()
