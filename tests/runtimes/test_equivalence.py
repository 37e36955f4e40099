"""Every runtime runs the same cold start: the same verified tensors and first token as a fresh interpreter, marks in
phase order, and the pre-initialized runtimes really did their imports ahead of the trial."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.checkpoints import CheckpointStore
from runtimes.base import Runtime, RuntimeContext
from runtimes.forkserver import ForkserverRuntime
from runtimes.fresh import FreshRuntime
from runtimes.pool import PoolRuntime
from tests.conftest import model_spec
from tests.runtimes.helpers import MARKS, checkpoint, context, trial_spec

CASES = [("tiny-opt", "safetensors"), ("tiny-llama", "torch_mmap")]


def _started(ctx: RuntimeContext, names: list[str]) -> dict[str, Runtime]:
    made: dict[str, Runtime] = {"fresh": FreshRuntime(), "forkserver": ForkserverRuntime(), "pool": PoolRuntime()}
    runtimes = {n: made[n] for n in names}
    for rt in runtimes.values():
        assert isinstance(rt, Runtime)
        rt.start(ctx)
    return runtimes


@pytest.fixture(scope="module")
def cpu_runtimes() -> Iterator[dict[str, Runtime]]:
    runtimes = _started(context(loaders=[loader for _, loader in CASES], models=[m for m, _ in CASES]),
                        ["fresh", "forkserver", "pool"])
    yield runtimes
    for rt in runtimes.values():
        rt.close()


def _check_marks(out: dict[str, object]) -> None:
    marks = out["marks"]
    assert isinstance(marks, dict)
    assert [marks[k] for k in MARKS] == sorted(marks[k] for k in MARKS), marks


@pytest.mark.parametrize(("model", "loader"), CASES)
def test_every_runtime_loads_the_same_tensors_and_first_token(cpu_runtimes: dict[str, Runtime],
                                                              shared_store: CheckpointStore, model: str,
                                                              loader: str) -> None:
    spec = trial_spec(shared_store, model, loader)
    outs = {}
    for name, rt in cpu_runtimes.items():
        rt.settle(120)
        outs[name] = rt.run_trial(spec, 300)
    nbytes = checkpoint(shared_store, model, loader).total_bytes
    assert nbytes == model_spec(model).checkpoint_bytes("fp16")
    for name, out in outs.items():
        _check_marks(out)
        assert out["verified_bytes"] == nbytes, name  # every tensor checked against the manifest
        assert out["first_token_id"] == outs["fresh"]["first_token_id"], name
    imports = {n: o["marks"]["imports"] - o["marks"]["handoff"] for n, o in outs.items()}
    assert imports["forkserver"] < imports["fresh"]  # torch and transformers were imported before the fork
    assert imports["pool"] < imports["fresh"]  # ... and before the pool worker took the trial
    assert outs["pool"]["worker"]["reused"] is True  # recycle=rss: its memory came back


@pytest.mark.gpu
def test_the_pool_on_cuda_gives_the_fresh_first_token(shared_store: CheckpointStore) -> None:
    """CUDA: the pool's workers created their CUDA context at start; the forkserver refuses (tested without a GPU)."""
    model, loader = CASES[0]
    runtimes = _started(context(loaders=[loader], models=[model], device="cuda"), ["fresh", "pool"])
    try:
        spec = trial_spec(shared_store, model, loader, device="cuda")
        outs = {name: rt.run_trial(spec, 300) for name, rt in runtimes.items()}
    finally:
        for rt in runtimes.values():
            rt.close()
    for out in outs.values():
        _check_marks(out)
        assert out["verified_bytes"] == checkpoint(shared_store, model, loader).total_bytes
    assert outs["pool"]["first_token_id"] == outs["fresh"]["first_token_id"]
    device_init = {n: o["marks"]["device_init"] - o["marks"]["imports"] for n, o in outs.items()}
    assert device_init["pool"] < device_init["fresh"]  # the worker's CUDA context existed before the trial
