"""Fresh-process trials: phase marks in order, and every way a trial can fail becomes a TrialError with stderr."""

from __future__ import annotations

import time
from typing import Any

import pytest

from harness.checkpoints import CheckpointStore
from harness.config import option_dict
from harness.executors.base import TrialError
from harness.executors.local import LocalExecutor
from tests.conftest import model_spec


def _spec(store: CheckpointStore, target: str) -> dict[str, Any]:
    ckpt = store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    model = option_dict("model", "tiny-opt")
    return {"loader": {"_target_": target}, "model": model, "checkpoint": str(ckpt.path), "dtype": "fp16",
            "device": "cpu", "prompt_tokens": 8, "verify": True}


def test_trial_marks_are_ordered(shared_store: CheckpointStore) -> None:
    out = LocalExecutor().run_trial(_spec(shared_store, "loaders.safetensors.SafetensorsLoader"), 300)
    m = out["marks"]
    order = ["spawn", "python", "imports", "device_init", "weights", "model_build", "first_token"]
    assert [m[k] for k in order] == sorted(m[k] for k in order)
    assert out["verified_bytes"] == model_spec("tiny-opt").checkpoint_bytes("fp16")
    assert isinstance(out["first_token_id"], int)


@pytest.mark.parametrize(("target", "needle"), [
    ("tests.harness.fakes.CrashingLoader", "fake loader exploded on purpose"),
    ("tests.harness.fakes.DyingLoader", "native crash in fake loader"),
    ("tests.harness.fakes.CorruptingLoader", "ChecksumMismatchError"),
])
def test_failed_trials_carry_their_stderr(shared_store: CheckpointStore, target: str, needle: str) -> None:
    with pytest.raises(TrialError, match=needle):
        LocalExecutor().run_trial(_spec(shared_store, target), 300)


@pytest.mark.slow
def test_hanging_trial_is_killed_at_its_timeout(shared_store: CheckpointStore) -> None:
    t0 = time.monotonic()
    with pytest.raises(TrialError, match="timed out after 20 s"):
        LocalExecutor().run_trial(_spec(shared_store, "tests.harness.fakes.HangingLoader"), 20)
    assert time.monotonic() - t0 < 60


def test_bad_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="trial_timeout_s"):
        LocalExecutor().run_trial({}, 0)
