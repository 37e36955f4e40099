"""A pool worker's host arena: faulted in at start and counted in its idle RSS, sized for the largest model the pool
serves; cold loads of models of different sizes read into it one after another (every tensor verified, so none shows
the previous model's bytes) while the recycle rule keeps reusing the worker; it goes when the worker recycles."""

from __future__ import annotations

import gc

import pytest

from harness.checkpoints import CheckpointStore
from harness.config import option_dict
from loaders import arena
from runtimes.pool import PoolRuntime
from runtimes.worker import TrialWorker
from tests.runtimes.helpers import POOL_WORKER, checkpoint, context, descendants, trial_spec, wait_gone

DIRECT = {"staging": "direct", "direct_io": "on", "dram_dir": None}  # the path that reads into the arena


def test_a_trial_worker_keeps_its_arena_in_its_idle_rss_and_frees_it_on_close() -> None:
    worker = TrialWorker(arena_bytes=32 << 20)
    try:
        made = worker.arena
        assert made is not None
        assert arena.current() is made
        info = worker.info()
        assert info["arena_bytes"] >= 32 << 20
        assert info["idle_rss_bytes"] >= 32 << 20  # faulted in before the idle RSS was taken
    finally:
        worker.close()
    assert arena.current() is None
    with pytest.raises(arena.ArenaClosedError):
        made.lease(1)
    gc.collect()


def test_no_arena_without_a_model_or_when_switched_off() -> None:
    assert TrialWorker().arena is None
    kwargs = PoolRuntime(arena=False).host_kwargs(context(loaders=("native",)))
    assert "arena_bytes" not in kwargs
    sized = PoolRuntime().host_kwargs(context(loaders=("native",), models=("tiny-opt", "opt-125m")))
    small = PoolRuntime().host_kwargs(context(loaders=("native",), models=("tiny-opt",)))
    assert sized["arena_bytes"] > small["arena_bytes"] > 0  # the largest model the pool serves
    assert sized["arena_ring_bytes"] == option_dict("loader", "native")["ring_bytes"]


def test_models_of_different_sizes_load_into_one_workers_arena_until_it_recycles(
        shared_store: CheckpointStore) -> None:
    before = descendants(POOL_WORKER)
    rt = PoolRuntime(size=1, recycle="rss", max_uses=3)  # warm-up on: the first cold start leaves nothing behind
    rt.start(context(loaders=("native",), models=("tiny-opt", "tiny-llama")))
    loader = option_dict("loader", "native", DIRECT)
    try:
        rt.settle(120)
        (worker,) = descendants(POOL_WORKER) - before
        outs = []
        for model in ("tiny-llama", "tiny-opt", "tiny-llama"):
            rt.settle(120)
            assert descendants(POOL_WORKER) - before == {worker}
            out = rt.run_trial(trial_spec(shared_store, model, "native", loader_cfg=loader), 120)
            assert out["verified_bytes"] == checkpoint(shared_store, model, "native").total_bytes
            assert out["loader_phases_s"]["arena"] == 1.0
            assert out["loader_info"]["path"] == "direct→arena"
            outs.append(out["worker"])
        assert [w["arena_leases"] for w in outs] == [1, 2, 3]
        assert outs[0]["idle_rss_bytes"] >= outs[0]["arena_bytes"]
        assert [w["reused"] for w in outs] == [True, True, False]  # the recycle rule holds; max_uses ends it
        assert wait_gone([worker]) == set()  # recycled: its arena went with it
    finally:
        rt.close()
    assert wait_gone(descendants(POOL_WORKER) - before) == set()
