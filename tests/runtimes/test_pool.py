"""The pool runtime with real worker processes: reuse while memory comes back, recycling, a worker killed mid-trial
replaced and the trial retried, failed, timed-out and interrupted trials leave no worker behind."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.checkpoints import CheckpointStore
from harness.config import option_dict
from harness.executors.base import TrialError
from runtimes.fresh import FreshRuntime
from runtimes.pool import PoolRuntime, reusable
from tests.runtimes.helpers import POOL_WORKER, checkpoint, context, descendants, read_pids, trial_spec, wait_gone

FAKES = "tests.harness.fakes"
SLOW = {"_target_": f"{FAKES}.SlowLoader"}
MiB = 1 << 20


@pytest.fixture(scope="module")
def pool() -> Iterator[PoolRuntime]:
    rt = PoolRuntime(size=1, recycle="rss", rss_tolerance=0.05)
    rt.start(context(extra_loaders=[SLOW]))
    yield rt
    rt.close()


def _slow_spec(store: CheckpointStore, pid_file: Path, sleep_s: float) -> dict[str, Any]:
    return trial_spec(store, loader_cfg={**SLOW, "sleep_s": sleep_s, "pid_file": str(pid_file)})


def _one_worker() -> int:
    (pid,) = descendants(POOL_WORKER)
    return pid


@pytest.mark.parametrize(("recycle", "idle", "after", "uses", "max_uses", "expected"), [
    ("rss", 400 * MiB, 400 * MiB, 1, 0, True),
    ("rss", 400 * MiB, 420 * MiB, 1, 0, True),  # exactly at the 5 % tolerance
    ("rss", 400 * MiB, 421 * MiB, 1, 0, False),  # memory did not come back: recycled
    ("rss", 400 * MiB, 300 * MiB, 1, 0, True),
    ("rss", 400 * MiB, 400 * MiB, 3, 3, False),  # used up
    ("never", 400 * MiB, 4000 * MiB, 1, 0, True),
    ("never", 400 * MiB, 400 * MiB, 2, 2, False),
    ("always", 400 * MiB, 400 * MiB, 1, 0, False),
])
def test_the_recycle_rule(recycle: str, idle: int, after: int, uses: int, max_uses: int, expected: bool) -> None:
    worker = {"idle_rss_bytes": idle, "rss_after_unload_bytes": after, "uses": uses}
    assert reusable(worker, recycle, 0.05, max_uses) is expected


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"size": 0}, "runtime.size=0"),
    ({"recycle": "sometimes"}, "runtime.recycle='sometimes'"),
    ({"rss_tolerance": 1.0}, "runtime.rss_tolerance=1.0"),
    ({"max_uses": -1}, "runtime.max_uses=-1"),
    ({"retries": -1}, "runtime.retries=-1"),
])
def test_bad_settings_are_named(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        PoolRuntime(**kwargs)


def test_run_trial_before_start_is_refused(shared_store: CheckpointStore) -> None:
    with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
        PoolRuntime().run_trial(trial_spec(shared_store), 10)


def test_a_worker_is_reused_while_its_memory_comes_back(pool: PoolRuntime, shared_store: CheckpointStore) -> None:
    pool.settle(120)
    worker = _one_worker()
    before = pool.describe()
    outs = []
    for _ in range(2):
        outs.append(pool.run_trial(trial_spec(shared_store), 120))
        pool.settle(120)
        assert descendants(POOL_WORKER) == {worker}  # the same process took both cold starts
    for out in outs:
        w = out["worker"]
        assert w["reused"] is True
        assert w["rss_after_unload_bytes"] <= 1.05 * w["idle_rss_bytes"]  # its memory came back after unload
        assert out["verified_bytes"] == checkpoint(shared_store, "tiny-opt").total_bytes
        assert out["retried"] == 0
    assert outs[1]["worker"]["uses"] == outs[0]["worker"]["uses"] + 1
    assert outs[0]["first_token_id"] == outs[1]["first_token_id"]
    after = pool.describe()
    assert after["reused"] - before["reused"] == 2
    assert after["recycled"] == before["recycled"]
    assert after["starts"] == before["starts"]


def test_a_worker_killed_mid_trial_is_replaced_and_the_trial_retried(pool: PoolRuntime, shared_store: CheckpointStore,
                                                                     tmp_path: Path) -> None:
    pool.settle(120)
    worker = _one_worker()
    before = pool.describe()
    pid_file = tmp_path / "pid"

    def kill_it() -> None:
        (pid,) = read_pids(pid_file)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_it, daemon=True)
    killer.start()
    out = pool.run_trial(_slow_spec(shared_store, pid_file, 1.5), 300)
    killer.join(10)
    assert out["retried"] == 1
    assert out["verified_bytes"] == checkpoint(shared_store, "tiny-opt").total_bytes
    (served,) = read_pids(pid_file)
    assert served != worker  # the retry ran on a new worker
    assert wait_gone([worker]) == set()
    pool.settle(120)
    assert descendants(POOL_WORKER) == {served}
    after = pool.describe()
    assert after["retried"] - before["retried"] == 1
    assert after["discarded"] - before["discarded"] == 1
    assert after["starts"] - before["starts"] == 1


def test_a_failed_trial_discards_its_worker(pool: PoolRuntime, shared_store: CheckpointStore) -> None:
    pool.settle(120)
    worker = _one_worker()
    with pytest.raises(TrialError, match=r"(?s)RuntimeError: fake loader exploded on purpose.*remote traceback"):
        pool.run_trial(trial_spec(shared_store, loader_cfg={"_target_": f"{FAKES}.CrashingLoader"}), 120)
    assert wait_gone([worker]) == set()  # a failed load may have left anything behind: never reused
    pool.settle(120)
    assert descendants(POOL_WORKER) - {worker}
    assert pool.run_trial(trial_spec(shared_store), 120)["worker"]["reused"] is True


def test_a_timed_out_trial_kills_its_worker(pool: PoolRuntime, shared_store: CheckpointStore, tmp_path: Path) -> None:
    pool.settle(120)
    pid_file = tmp_path / "pid"
    with pytest.raises(TrialError, match="trial timed out after 3 s on pool worker"):
        pool.run_trial(_slow_spec(shared_store, pid_file, 600), 3)
    (worker,) = read_pids(pid_file, within_s=1)
    assert wait_gone([worker]) == set()


def test_ctrl_c_during_a_pool_trial_kills_its_worker(pool: PoolRuntime, shared_store: CheckpointStore,
                                                     tmp_path: Path) -> None:
    """The interrupted trial's worker is busy, so closing the pool would not reach it: run_trial must end it."""
    pool.settle(120)
    pid_file = tmp_path / "pid"
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        read_pids(pid_file)
        signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        pool.run_trial(_slow_spec(shared_store, pid_file, 600), 900)
    interrupter.join(10)
    (worker,) = read_pids(pid_file, within_s=1)
    assert wait_gone([worker]) == set()
    pool.settle(120)
    assert pool.run_trial(trial_spec(shared_store), 120)["verified_bytes"] > 0  # the pool serves on


def test_recycle_always_replaces_the_worker_after_each_trial(shared_store: CheckpointStore) -> None:
    before = descendants(POOL_WORKER)
    rt = PoolRuntime(size=1, recycle="always", warmup=False, preimport=[], preimport_run=False)  # quick starts
    try:
        rt.start(context())
        served = []
        for _ in range(2):
            rt.settle(120)
            (worker,) = descendants(POOL_WORKER) - before
            out = rt.run_trial(trial_spec(shared_store), 120)
            assert out["worker"]["reused"] is False
            assert out["worker"]["uses"] == 1  # a fresh worker each time
            served.append(worker)
            assert wait_gone([worker]) == set()  # closed once its trial was done
        assert served[0] != served[1]
        stats = rt.describe()
        assert stats["recycled"] == 2
        assert stats["reused"] == 0
        assert stats["starts"] >= 2
        assert stats["warmup"] is False
    finally:
        rt.close()
    assert wait_gone(descendants(POOL_WORKER) - before) == set()


@pytest.mark.slow(seconds=90)
def test_a_pool_with_prepared_engines_swaps_weights_and_gives_freshs_token(shared_store: CheckpointStore) -> None:
    engine = {**option_dict("engine", "compiled"), "max_seq": 32}
    spec = {**trial_spec(shared_store, "tiny-opt"), "engine": engine, "decode_tokens": 4}
    spec["prompt_ids"] = list(range(1, 9))
    ctx = replace(context(), engines=[engine], prompt_ids=spec["prompt_ids"], decode_tokens=4)
    pool = PoolRuntime(prepare_engines=True, recycle="never")
    pool.start(ctx)
    try:
        outs = [pool.run_trial(spec, 300) for _ in range(2)]
    finally:
        pool.close()
    fresh = FreshRuntime()
    fresh.start(context())
    eager = fresh.run_trial({**spec, "engine": option_dict("engine", "eager")}, 300)
    for out in outs:
        assert out["engine"]["engine_prepared"] is True
        assert out["engine"]["compile_cache_status"] == "prepared"
        m = out["marks"]
        assert m["kv_alloc"] == m["compile"] == m["graph_capture"] == m["model_build"]  # nothing set up per start
        assert out["swap_verified_bytes"] == out["verified_bytes"]  # the held model is exactly the loaded tensors
        assert out["first_token_id"] == eager["first_token_id"]
        assert len(out["decode_s"]) == 4
    assert outs[0]["worker"]["prepare_s"] > 0


@pytest.mark.slow(seconds=90)
def test_an_architecture_no_worker_prepared_takes_a_fresh_worker(shared_store: CheckpointStore) -> None:
    """The pool prepared tiny-opt: a tiny-llama start (or int8, or another engine) runs on a worker started for it
    alone, whose start lies inside the measured cold start; the prepared worker serves tiny-opt on, untouched."""
    engine = {**option_dict("engine", "compiled"), "max_seq": 32, "backend": "eager"}
    ids = list(range(1, 9))
    ctx = replace(context(), engines=[engine], prompt_ids=ids, decode_tokens=2)
    opt = {**trial_spec(shared_store, "tiny-opt"), "engine": engine, "decode_tokens": 2, "prompt_ids": ids}
    llama = {**trial_spec(shared_store, "tiny-llama"), "engine": engine, "decode_tokens": 2, "prompt_ids": ids}
    before = descendants(POOL_WORKER)
    pool = PoolRuntime(prepare_engines=True, recycle="never", warmup=False)
    pool.start(ctx)
    try:
        (prepared_worker,) = descendants(POOL_WORKER) - before
        other = pool.run_trial(llama, 300)
        assert descendants(POOL_WORKER) - before == {prepared_worker}  # the fresh worker is gone, the pool's stays
        again = pool.run_trial(opt, 300)
        other_engine = pool.run_trial({**opt, "engine": {**engine, "max_seq": 48}}, 300)
        stats = pool.describe()
    finally:
        pool.close()
    assert other["worker"]["fresh_start"] is True
    assert other["engine"]["engine_prepared"] is False
    m = other["marks"]
    assert m["handoff"] - m["spawn"] > 0.5  # a process started and imported inside the cold start
    assert m["compile"] > m["kv_alloc"]  # it compiled its own engine
    assert other["worker"]["prepare_s"] == 0
    assert other["worker"]["prebuild_s"] == 0
    assert again["worker"]["fresh_start"] is False
    assert again["engine"]["engine_prepared"] is True
    assert again["marks"]["compile"] == again["marks"]["model_build"]  # still prepared: nothing compiled
    assert other_engine["worker"]["fresh_start"] is True
    assert stats["fresh_starts"] == 2


@pytest.mark.slow(seconds=90)
def test_a_prepared_engine_binds_native_loads_and_frees_the_arena_for_the_next(shared_store: CheckpointStore) -> None:
    """A native load lands in the worker's arena, 4 KiB-aligned: the prepared model's parameters point at it (no
    copy), and at unload they let it go, so the next cold start reads into the arena again."""
    engine = {**option_dict("engine", "compiled"), "max_seq": 32, "backend": "aot_eager"}
    ids = list(range(1, 9))
    reads = {**option_dict("loader", "native"), "direct_io": "on"}  # read (as a cold cache is), not mapped
    spec = {**trial_spec(shared_store, "tiny-opt", loader="native", loader_cfg=reads), "engine": engine,
            "decode_tokens": 2, "prompt_ids": ids}
    ctx = replace(context(loaders=(), extra_loaders=[reads]), engines=[engine], prompt_ids=ids, decode_tokens=2)
    pool = PoolRuntime(prepare_engines=True, recycle="never", warmup=False)
    pool.start(ctx)
    try:
        outs = [pool.run_trial(spec, 300) for _ in range(3)]
    finally:
        pool.close()
    for out in outs:
        assert out["engine"]["engine_prepared"] is True
        assert out["engine"]["swap_mode"] == "bind"
        assert out["loader_phases_s"]["arena"] == 1.0  # the arena was free again: the lease ended at unload
        assert out["swap_verified_bytes"] == out["verified_bytes"]
    assert len({out["first_token_id"] for out in outs}) == 1
