"""Real instances: greedy tokens with a KV cache, and live migration's one uninterrupted stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.serverless.pause import drive
from harness.checkpoints import CheckpointStore
from harness.config import option_dict
from harness.executors.local import LocalExecutor
from harness.executors.workers import WorkerCallError, WorkerHandle, start_worker
from schedulers.real.instance import prompt_tokens
from schedulers.real.serving import Serving

MODEL = option_dict("model", "tiny-llama")
LOADER = {"_target_": "loaders.native.loader.NativeLoader", "dram_dir": None, "threads": 1}
OUT = 40


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hydra.utils import instantiate

    store = CheckpointStore(tmp_path_factory.mktemp("real-ckpt"))
    return store.ensure(instantiate(MODEL), "fp32", "native", 0, progress=False).path


@pytest.fixture(scope="module")
def pair(ckpt: Path) -> Iterator[tuple[WorkerHandle, WorkerHandle]]:
    ws = [start_worker(LocalExecutor(), "schedulers.real.instance:ModelInstance", {"model": MODEL, "dtype": "fp32"},
                       name=f"inst{k}") for k in range(2)]
    try:
        for w in ws:
            phases = w.call("load", str(ckpt), LOADER, timeout_s=120)
            assert phases["bytes"] > 0
            assert phases["weights_s"] > 0
        yield ws[0], ws[1]
    finally:
        for w in ws:
            w.close()


def _unmigrated(w: WorkerHandle, rid: int, prompt: list[int]) -> Serving:
    return drive(w, rid, prompt, OUT, chunk=4)


def test_migrated_stream_equals_unmigrated_tokens(pair: tuple[WorkerHandle, WorkerHandle]) -> None:
    src, dst = pair
    prompt = prompt_tokens(5, 24, 1000)
    ref = _unmigrated(src, 1, prompt)
    assert len(set(ref.tokens)) > 5  # a varied greedy stream, so equality means something
    s = drive(src, 2, prompt, OUT, chunk=2, dest=dst, switch_at=9, how="migrate", stop_tokens=4)
    assert s.migrated == 1
    assert s.rounds >= 1
    assert s.tokens == ref.tokens
    with pytest.raises(WorkerCallError, match="no session"):  # the source let go of the request
        src.call("step", 2, 1)


def test_restart_baseline_gives_the_same_tokens_and_a_pause(pair: tuple[WorkerHandle, WorkerHandle]) -> None:
    src, dst = pair
    prompt = prompt_tokens(9, 30, 1000)
    ref = _unmigrated(src, 3, prompt)
    s = drive(src, 4, prompt, OUT, chunk=4, dest=dst, switch_at=21, how="restart")
    assert s.migrated == 1
    assert s.rounds == 0
    assert s.tokens == ref.tokens
    assert s.max_gap_s() > 0


def test_adopt_rejects_diverging_tokens(pair: tuple[WorkerHandle, WorkerHandle]) -> None:
    _, dst = pair
    dst.call("adopt", 7, [1, 2, 3, 4])
    with pytest.raises(WorkerCallError, match="diverge"):
        dst.call("adopt", 7, [9, 9, 9, 9, 9])
