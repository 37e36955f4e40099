"""Every option of every config group composes and instantiates; every experiment runs in smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness.config import CONF_DIR, compose_config, options

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
CASES = [(g, o) for g in GROUPS if g != "experiment" for o in options(g)]


def test_required_groups_exist() -> None:
    assert {"experiment", "model", "loader", "storage", "logger", "executor"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(compose_cfg: Callable[..., Any], group: str, option: str,
                                          request: pytest.FixtureRequest) -> None:
    # model=local names no files of its own: it instantiates with a real checkpoint directory
    inputs = [f"model.path={request.getfixturevalue('real_models').opt_fp32_single}"] \
        if (group, option) == ("model", "local") else []
    cfg = compose_cfg([f"{group}={option}", *inputs])
    node = cfg[group]
    assert node is not None
    OmegaConf.resolve(node)
    if "_target_" in node:
        assert instantiate(node) is not None


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_composes(compose_cfg: Callable[..., Any], experiment: str) -> None:
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.experiment.name
    assert callable(instantiate(cfg.experiment.run))
    first_lines = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:2]
    assert first_lines[0] == "# @package _global_"
    assert first_lines[1].startswith("# coldstart experiment="), "line 2 must be the command that runs it"


def test_unknown_option_lists_the_allowed_ones() -> None:
    env = {**os.environ, "COLDSTART_RESULTS": "/nonexistent-unused"}
    out = subprocess.run([sys.executable, "-m", "harness", "loader=nope"], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "safetensors" in out.stderr
    assert "torch_mmap" in out.stderr


# Experiments that read the composed model (`model=...`): the smoke runs give them tiny-opt. Elsewhere `model=` would
# be ignored, which is an error (harness.config.check_args).
READS_MODEL = {"loading", "sllm_loading", "sllm_ablation", "dtype_coldstart", "calibrate", "pipeline_real"}
# Experiments with the loading experiment's runtime axis: their smoke runs fork trials from a zygote (runtimes/
# forkserver.py) instead of paying a fresh interpreter each; tests/experiments/loading measures the fresh runtime.
FORKS = {"loading", "sllm_loading", "sllm_ablation", "dtype_coldstart", "calibrate"}
# Keys of its own file an experiment does not read with smoke=true (one trial; the composed model, not the ladder).
SMOKE_REPLACES = {"loading": {"trials"}, "sllm_ablation": {"trials"}, "dtype_coldstart": {"trials"},
                  "sllm_loading": {"trials", "models"}, "calibrate": {"trials", "models"}}
# The top-level keys of conf/config.yaml an experiment may declare in `experiment.reads` (the groups whose options it
# may list are checked by check_args, the rest every run reads).
DECLARABLE = {"seed", "device", "dtype", "storage", "executor", "cluster", "workload"}


def smoke_overrides(name: str) -> list[str]:
    extra = ["model=tiny-opt"] if name in READS_MODEL else []
    return [f"experiment={name}", "smoke=true", "progress=false", *extra,
            *(["runtimes=[forkserver]"] if name in FORKS else [])]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_in_smoke_mode_reading_what_it_declares(experiment: str, tmp_path: Path) -> None:
    """Each experiment runs with smoke=true (in this process, as the app's job would) and reads exactly the keys of
    conf/config.yaml its file declares in ``experiment.reads``, and every key of its own file: a declared key it does
    not read would let an override be silently ignored; a key it reads undeclared would refuse a valid override."""
    from harness.overrides import own_keys
    from harness.run import run_experiment
    from tests.harness.readtracking import roots, tracking_reads

    cfg = compose_config(smoke_overrides(experiment))
    with tracking_reads(cfg) as reads:
        result = run_experiment(cfg, tmp_path / "run")
    assert result.documents["status"]["complete"] is True
    assert (tmp_path / "run" / "summary.csv").exists() or any((tmp_path / "run").glob("*.parquet"))
    read = roots(reads)
    declared = {str(k) for k in cfg.experiment.reads}
    assert declared <= DECLARABLE, declared - DECLARABLE
    assert read & DECLARABLE == declared, {"read, undeclared": read & DECLARABLE - declared,
                                           "declared, unread": declared - read}
    unread_own = own_keys(compose_config([f"experiment={experiment}"])) - read - SMOKE_REPLACES.get(experiment, set())
    assert not unread_own, f"experiment {experiment} never reads its own keys {sorted(unread_own)}"


@pytest.mark.slow
def test_experiments_run_from_the_command_line_as_a_multirun(tmp_path: Path) -> None:
    """The app as a user starts it, one experiment of each kind in one multirun (smoke=true): every job writes its
    tables and the sweep its report."""
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results"), "COLDSTART_CACHE": str(tmp_path / "cache")}
    names = ["bprr_optimality", "serverless", "loading"]
    out = subprocess.run([sys.executable, "-m", "harness", "-m", f"experiment={','.join(names)}", "smoke=true",
                          "progress=false", "runtimes=[forkserver]"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode != 0  # runtimes is a key of the loading family only: refused for the others, at once
    assert "no key 'runtimes'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "harness", "-m", f"experiment={','.join(names)}", "smoke=true",
                          "progress=false"], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    jobs = [p.parent for p in (tmp_path / "results" / "sweeps").rglob("summary.csv") if "report" not in p.parts]
    ran = {OmegaConf.load(j / "config.yaml").experiment.name for j in jobs}
    assert ran == set(names)
