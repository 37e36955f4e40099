"""The long-lived worker seam, local and on Ray: calls, futures, remote errors, dead workers, no orphans."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.config import option_dict
from harness.executors.base import TrialError
from harness.executors.local import LocalExecutor
from harness.executors.ray import RayExecutor
from harness.executors.workers import (
    WorkerCallError,
    WorkerDiedError,
    WorkerHandle,
    WorkerTimeoutError,
    start_worker,
)
from harness.paths import repo_root

TARGET = "tests.harness.test_executors:Counter"
ENV = {"PYTHONPATH": str(repo_root()), "COUNTER_TAG": "tagged"}


class Counter:
    """Hosted in the workers under test."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def add(self, n: int) -> int:
        self.value += n
        return self.value

    def env(self, key: str) -> str | None:
        return os.environ.get(key)

    def threads(self) -> int:
        import torch

        return int(torch.get_num_threads())

    def pid(self) -> int:
        return os.getpid()

    def fail(self) -> None:
        raise KeyError("no such model: opt-x")

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def spawn_child(self) -> int:
        import subprocess
        import sys

        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid

    def hog(self, nbytes: int) -> int:
        self.buf = bytearray(nbytes)
        for i in range(0, nbytes, 4096):
            self.buf[i] = 1
        time.sleep(5)
        return nbytes


class Broken:
    def __init__(self) -> None:
        raise ValueError("bad checkpoint path /nope")


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def ray_executor(ray_local: Any) -> Iterator[RayExecutor]:
    ex = RayExecutor()
    yield ex
    ex.close()  # kills this executor's actors; the session-wide Ray stays up (it was not started here)


@pytest.fixture(params=["local", "ray"])
def executor(request: pytest.FixtureRequest) -> Any:
    if request.param == "local":
        return LocalExecutor()
    return request.getfixturevalue("ray_executor")


def test_call_submit_env_and_thread_budget(executor: Any) -> None:
    w = start_worker(executor, TARGET, {"start": 10}, name="c", num_cpus=1, env=ENV)
    try:
        assert isinstance(w, WorkerHandle)
        assert w.call("add", 5, timeout_s=30) == 15
        futs = [w.submit("add", 1) for _ in range(3)]
        assert [f.result(timeout=30) for f in futs] == [16, 17, 18]  # one at a time, in order
        assert w.call("env", "COUNTER_TAG") == "tagged"
        assert w.call("threads") == 1
        assert w.call("pid") == w.pid() != os.getpid()
        assert w.alive()
    finally:
        w.close()
    assert not w.alive()
    assert _gone(w.pid() or -1)


def test_remote_error_carries_type_and_traceback(executor: Any) -> None:
    w = start_worker(executor, TARGET, {}, name="err", env=ENV)
    try:
        with pytest.raises(WorkerCallError) as info:
            w.call("fail", timeout_s=30)
        assert info.value.remote_type == "KeyError"
        assert "no such model: opt-x" in str(info.value)
        assert "in fail" in info.value.remote_traceback  # the worker-side frame
        assert w.call("add", 1) == 1  # the worker survives its method's error
    finally:
        w.close()


def test_construction_error_is_reported(executor: Any) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(WorkerCallError, match="bad checkpoint path /nope") as info:
        start_worker(executor, "tests.harness.test_executors:Broken", {}, name="broken", env=ENV)
    assert info.value.remote_type == "ValueError"
    if isinstance(executor, LocalExecutor):  # the half-started worker process is gone
        left = {p.pid for p in psutil.Process().children(recursive=True)} - before
        assert all(_gone(pid) for pid in left)


def test_killed_worker_is_detected_mid_call(executor: Any) -> None:
    w = start_worker(executor, TARGET, {}, name="victim", env=ENV)
    pid = w.pid()
    assert pid is not None
    fut = w.submit("sleep", 30.0)
    time.sleep(0.5)
    os.kill(pid, 9)  # killed from outside, as an OOM killer or a crash would
    with pytest.raises(WorkerDiedError, match="victim"):
        fut.result(timeout=30)
    assert not w.alive()
    with pytest.raises(WorkerDiedError):
        w.call("add", 1, timeout_s=10)
    w.close()


def test_call_timeout_is_named() -> None:
    w = start_worker(LocalExecutor(), TARGET, {}, name="slow", env=ENV)
    try:
        with pytest.raises(WorkerTimeoutError, match="sleep"):
            w.call("sleep", 2.0, timeout_s=0.2)
        assert w.alive()
    finally:
        w.close()


def test_local_close_leaves_no_orphans() -> None:
    w = start_worker(LocalExecutor(), TARGET, {}, name="parent", env=ENV)
    grandchild = w.call("spawn_child", timeout_s=30)
    pid = w.pid()
    w.close()
    assert pid is not None
    assert _gone(pid)
    assert _gone(grandchild)  # the worker's own process group goes with it


def test_local_memory_budget_kills_and_names_it() -> None:
    w = start_worker(LocalExecutor(), TARGET, {}, name="hog", memory_bytes=400 << 20, env=ENV)
    with pytest.raises(WorkerDiedError, match="memory budget"):
        w.call("hog", 600 << 20, timeout_s=30)
    w.close()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"package\.module:Class"):
        start_worker(LocalExecutor(), "tests.harness.test_executors.Counter", {}, name="x")
    with pytest.raises(ValueError, match="num_cpus"):
        start_worker(LocalExecutor(), TARGET, {}, name="x", num_cpus=0)
    with pytest.raises(TypeError, match="cannot host workers"):
        start_worker(object(), TARGET, {}, name="x")


def test_ray_trial_task_reports_a_failed_trial_as_trial_error(ray_executor: RayExecutor) -> None:
    spec = {"loader": {"_target_": "nope.Nope"}, "model": {}, "checkpoint": "/nonexistent", "dtype": "fp32",
            "device": "cpu"}
    with pytest.raises(TrialError, match="exited with code"):
        ray_executor.run_trial(spec, 60.0)


@pytest.mark.slow
def test_ray_runs_a_real_cold_start_trial(ray_executor: RayExecutor, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from harness.checkpoints import CheckpointStore

    model = option_dict("model", "tiny-opt")
    ckpt = CheckpointStore(tmp_path / "ckpts").ensure(instantiate(model), "fp32", "safetensors", 0, progress=False)
    spec = {"loader": {"_target_": "loaders.safetensors.SafetensorsLoader"}, "model": model,
            "checkpoint": str(ckpt.path), "dtype": "fp32", "device": "cpu", "prompt_tokens": 8, "verify": True,
            "threads": 1}
    out = ray_executor.run_trial(spec, 120.0)
    marks = out["marks"]
    assert marks["spawn"] <= marks["python"] <= marks["imports"] <= marks["weights"] <= marks["first_token"]
    assert out["verified_bytes"] == ckpt.total_bytes
