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

from harness.config import conf_dir, options

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())
CASES = [(g, o) for g in GROUPS if g != "experiment" for o in options(g)]


def test_required_groups_exist() -> None:
    assert {"experiment", "model", "loader", "storage", "logger", "executor"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(compose_cfg: Callable[..., Any], group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}"])
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
    first_lines = (conf_dir() / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:2]
    assert first_lines[0] == "# @package _global_"
    assert first_lines[1].startswith("# coldstart experiment="), "line 2 must be the command that runs it"


def test_unknown_option_lists_the_allowed_ones() -> None:
    env = {**os.environ, "COLDSTART_RESULTS": "/nonexistent-unused"}
    out = subprocess.run([sys.executable, "-m", "harness", "loader=nope"], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "safetensors" in out.stderr
    assert "torch_mmap" in out.stderr


@pytest.mark.slow
def test_every_experiment_runs_in_smoke_mode(tmp_path: Path) -> None:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results"), "COLDSTART_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "harness", "-m", "experiment=glob(*)", "smoke=true", "model=tiny-opt",
           "progress=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = list((tmp_path / "results" / "sweeps").rglob("summary.csv"))
    assert len(summaries) == len(options("experiment")), out.stderr[-2000:]
