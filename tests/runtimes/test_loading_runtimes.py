"""The loading experiment's runtimes axis end to end: rows per runtime, and no zygote or pool worker left behind,
whether the run finishes or is stopped by Ctrl-C (what it measured is kept)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import experiments.loading.experiment as loading
from harness.experiment import PartialResult
from tests.runtimes.helpers import POOL_WORKER, ZYGOTE, descendants, wait_gone


def _cfg(compose_cfg: Callable[..., Any], tmp_path: Path, runtimes: str, trials: int, *extra: str) -> Any:
    return compose_cfg(["model=tiny-opt", f"trials={trials}", "loaders=[safetensors]", "cache_states=[warm]",
                        f"runtimes={runtimes}", "device=cpu", f"storage.root={tmp_path / 'ckpts'}", "progress=false",
                        "ceiling_max_bytes=1048576", *extra])


def _ours() -> set[int]:
    return descendants(ZYGOTE) | descendants(POOL_WORKER)


def test_a_run_with_forkserver_and_pool_leaves_no_process(compose_cfg: Callable[..., Any], tmp_path: Path) -> None:
    before = _ours()
    cfg = _cfg(compose_cfg, tmp_path, "[forkserver,pool]", 1, "runtime_args.pool.max_uses=5")
    result = loading.run(cfg, tmp_path / "run")
    assert wait_gone(_ours() - before) == set()
    trials = result.tables["trials"].set_index("runtime")
    assert sorted(trials.index) == ["forkserver", "pool"]
    assert trials.ok.all()
    assert (trials.verified_bytes == trials.bytes).all()
    assert trials.first_token_id.nunique() == 1
    assert trials.loc["pool", "worker_reused"]  # warmed up at start: its memory came back after the trial
    described = result.documents["environment"]["runtimes"]
    assert described["forkserver"]["zygote_starts"] == 1  # the processes existed: they were started, then closed
    assert described["pool"]["starts"] >= 1
    assert described["pool"]["max_uses"] == 5  # runtime_args.<name> reach the runtime


def test_ctrl_c_in_the_trial_loop_keeps_the_rows_and_leaves_no_process(
        compose_cfg: Callable[..., Any], tmp_path: Path,
        extra_options: Callable[[str, str, dict[str, Any]], None]) -> None:
    extra_options("runtime", "interrupting", {"_target_": "tests.runtimes.fakes.InterruptingPoolRuntime",
                                              "after": 1, "size": 1})
    before = _ours()
    with pytest.raises(PartialResult) as info:
        loading.run(_cfg(compose_cfg, tmp_path, "[forkserver,interrupting]", 2), tmp_path / "run")
    assert isinstance(info.value.cause, KeyboardInterrupt)
    assert wait_gone(_ours() - before) == set()
    trials = info.value.result.tables["trials"]
    assert set(trials.runtime) == {"forkserver", "interrupting"}  # the first trial of each runtime, kept
    assert 2 <= len(trials) <= 3  # the interrupted trial and the ones after it are not invented
    assert trials.ok.all()
    assert "runtimes" in info.value.result.documents["environment"]
