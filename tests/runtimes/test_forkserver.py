"""The forkserver runtime: failed, hanging and interrupted forked trials, a dead zygote restarted, CUDA refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from harness.checkpoints import CheckpointStore
from harness.executors.base import TrialError
from runtimes.base import RuntimeUnsupportedError
from runtimes.forkserver import ForkserverRuntime
from runtimes.zygote import ZygoteError
from tests.runtimes.helpers import (
    POOL_WORKER,
    ZYGOTE,
    checkpoint,
    context,
    descendants,
    read_pids,
    running,
    trial_spec,
    wait_gone,
)

FAKES = "tests.harness.fakes"


@pytest.fixture(scope="module")
def forkserver() -> Iterator[ForkserverRuntime]:
    rt = ForkserverRuntime()
    rt.start(context())
    yield rt
    rt.close()


def _forked_children(rt: ForkserverRuntime) -> set[int]:
    pid = rt.zygote.pid() if rt.zygote else None
    return {p.pid for p in psutil.Process(pid).children() if p.status() != psutil.STATUS_ZOMBIE} if pid else set()


@pytest.mark.parametrize(("target", "needles"), [
    (f"{FAKES}.CrashingLoader", ["exited with code 1", "Traceback", "RuntimeError: fake loader exploded on purpose"]),
    (f"{FAKES}.DyingLoader", ["exited with code 139", "native crash in fake loader"]),
])
def test_a_failed_forked_trial_is_a_trial_error_with_its_output(forkserver: ForkserverRuntime,
                                                                shared_store: CheckpointStore, target: str,
                                                                needles: list[str]) -> None:
    with pytest.raises(TrialError) as info:
        forkserver.run_trial(trial_spec(shared_store, loader_cfg={"_target_": target}), 120)
    for needle in needles:
        assert needle in str(info.value)
    assert forkserver.zygote is not None
    assert forkserver.zygote.alive()  # a child's failure is not the zygote's


def test_a_hanging_forked_trial_is_killed_with_what_it_started(forkserver: ForkserverRuntime,
                                                               shared_store: CheckpointStore, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    spec = trial_spec(shared_store, loader_cfg={"_target_": f"{FAKES}.HangingWithChildLoader", "pid_file": str(pids)})
    with pytest.raises(TrialError, match="trial timed out after 3 s"):
        forkserver.run_trial(spec, 3)
    child, grandchild = read_pids(pids, within_s=1)
    assert wait_gone([child, grandchild]) == set()
    assert _forked_children(forkserver) == set()
    out = forkserver.run_trial(trial_spec(shared_store), 120)  # the zygote serves on
    assert out["verified_bytes"] > 0


def test_a_killed_zygote_is_restarted_outside_the_trial(shared_store: CheckpointStore) -> None:
    before = descendants(ZYGOTE)
    rt = ForkserverRuntime(preimport=["json"], preimport_run=False)  # a light zygote: its restarts take no time
    try:
        rt.start(context())
        assert rt.zygote is not None
        first = rt.zygote.pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_gone([first]) == set()
        out = rt.run_trial(trial_spec(shared_store), 120)
        assert out["verified_bytes"] == checkpoint(shared_store, "tiny-opt").total_bytes
        assert rt.describe()["zygote_starts"] == 2
        assert len(rt.describe()["zygote_start_s"]) == 2
        second = rt.zygote.pid()
        assert second not in (None, first)
        os.kill(second, signal.SIGKILL)  # settle() restarts it too, before the next measured cold start
        assert wait_gone([second]) == set()
        rt.settle(60)
        assert rt.zygote.alive()
        assert rt.describe()["zygote_starts"] == 3
        assert descendants(ZYGOTE) - before == {rt.zygote.pid()}
    finally:
        rt.close()
    assert wait_gone(descendants(ZYGOTE) - before) == set()


def test_a_zygote_killed_mid_trial_does_not_lose_the_trial(forkserver: ForkserverRuntime,
                                                          shared_store: CheckpointStore, tmp_path: Path) -> None:
    """The forked child has its own session: it finishes its cold start without its zygote, which the next trial
    restarts."""
    assert forkserver.zygote is not None
    zygote = forkserver.zygote.pid()
    assert zygote is not None
    starts = forkserver.describe()["zygote_starts"]
    pid_file = tmp_path / "pid"

    def kill_zygote() -> None:
        read_pids(pid_file)
        os.kill(zygote, signal.SIGKILL)

    killer = threading.Thread(target=kill_zygote, daemon=True)
    killer.start()
    out = forkserver.run_trial(trial_spec(shared_store, loader_cfg={"_target_": f"{FAKES}.SlowLoader", "sleep_s": 1.5,
                                                                    "pid_file": str(pid_file)}), 120)
    killer.join(10)
    assert not running(zygote)
    assert out["verified_bytes"] == checkpoint(shared_store, "tiny-opt").total_bytes
    assert forkserver.run_trial(trial_spec(shared_store), 120)["verified_bytes"] > 0
    assert forkserver.describe()["zygote_starts"] == starts + 1


def test_ctrl_c_during_a_forked_trial_leaves_no_process(shared_store: CheckpointStore, tmp_path: Path) -> None:
    before = descendants(ZYGOTE)
    rt = ForkserverRuntime()
    rt.start(context())
    pid_file = tmp_path / "pid"
    spec = trial_spec(shared_store, loader_cfg={"_target_": f"{FAKES}.SlowLoader", "sleep_s": 600,
                                                "pid_file": str(pid_file)})
    interrupter = _interrupt_main_once(pid_file)
    try:
        with pytest.raises(KeyboardInterrupt):
            rt.run_trial(spec, 900)
    finally:
        interrupter.join(10)
        rt.close()
    (child,) = read_pids(pid_file, within_s=1)
    assert wait_gone([child]) == set()
    assert wait_gone(descendants(ZYGOTE) - before) == set()


def _interrupt_main_once(pid_file: Path) -> threading.Thread:
    """Once the trial's loader wrote its pid, deliver SIGINT to the main thread (a Ctrl-C mid-trial)."""
    main = threading.main_thread().ident
    assert main is not None

    def go() -> None:
        read_pids(pid_file)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_is_refused_before_anything_starts(device: str) -> None:
    before = descendants(ZYGOTE)
    rt = ForkserverRuntime()
    with pytest.raises(RuntimeUnsupportedError, match=rf"forkserver cannot serve device={device}.*runtime=pool"):
        rt.start(context(device=device))
    assert rt.zygote is None
    assert descendants(ZYGOTE) == before
    assert isinstance(RuntimeUnsupportedError("x"), ValueError)  # the app's one-line error, exit code 2


def test_the_app_refuses_forkserver_on_cuda_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path)}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, "-m", "harness", "experiment=loading", "runtimes=[forkserver]", "device=cuda",
                          "model=tiny-opt", "loaders=[safetensors]", "cache_states=[warm]", "trials=1",
                          "progress=false", f"storage.root={tmp_path / 'ckpts'}"],
                         capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed
    assert "Traceback" not in printed
    errors = [line for line in printed.splitlines() if "device=cuda" in line]
    assert len(errors) == 1, printed
    if torch.cuda.is_available():  # a GPU: the runtime refuses, naming what to use instead
        assert "RuntimeUnsupportedError: runtime=forkserver cannot serve device=cuda" in errors[0]
    else:  # no GPU: refused earlier, by the device check
        assert "no CUDA device is visible" in errors[0]
    assert not (tmp_path / "ckpts").exists()  # refused before any checkpoint was written


def test_bad_arguments_are_named(forkserver: ForkserverRuntime, shared_store: CheckpointStore) -> None:
    with pytest.raises(ValueError, match=r"runtime\.start_timeout_s=0"):
        ForkserverRuntime(start_timeout_s=0)
    idle = ForkserverRuntime()
    with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
        idle.run_trial(trial_spec(shared_store), 10)
    assert idle.describe()["zygote_starts"] == 0
    idle.close()  # closing what never started is fine
    with pytest.raises(ValueError, match="trial_timeout_s must be > 0, got 0"):
        forkserver.run_trial(trial_spec(shared_store), 0)


def test_a_zygote_that_cannot_import_fails_start(shared_store: CheckpointStore) -> None:
    before = descendants(ZYGOTE)
    rt = ForkserverRuntime(preimport=["json", "coldstart_no_such_module"], preimport_run=False)
    with pytest.raises(ZygoteError, match="ModuleNotFoundError: No module named 'coldstart_no_such_module'"):
        rt.start(context())
    rt.close()
    assert wait_gone(descendants(ZYGOTE) - before) == set()


def test_cuda_is_refused_before_any_listed_runtime_starts() -> None:
    """``runtimes=[pool,forkserver] device=cuda``: the refusal comes before the pool starts a worker."""
    from experiments.loading.experiment import start_runtimes
    from harness.config import compose_config

    before = descendants(POOL_WORKER)
    cfg = compose_config(["experiment=loading", "runtimes=[pool,forkserver]"])
    with pytest.raises(RuntimeUnsupportedError, match="forkserver cannot serve device=cuda"):
        start_runtimes(cfg, ["pool", "forkserver"], context(device="cuda"))
    assert descendants(POOL_WORKER) == before
