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

from harness.config import CONF_DIR, options

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
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
    first_lines = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:2]
    assert first_lines[0] == "# @package _global_"
    assert first_lines[1].startswith("# coldstart experiment="), "line 2 must be the command that runs it"


def test_unknown_option_lists_the_allowed_ones() -> None:
    env = {**os.environ, "COLDSTART_RESULTS": "/nonexistent-unused"}
    out = subprocess.run([sys.executable, "-m", "harness", "loader=nope"], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "safetensors" in out.stderr
    assert "torch_mmap" in out.stderr


# Rough smoke-run seconds of the experiments that start loading trials (2-core VM, 2026-12-02); others ≈ 10 s.
SMOKE_COST_S = {"dtype_coldstart": 90, "sllm_loading": 60, "sllm_ablation": 60, "loading": 50, "calibrate": 40,
                "sim_vs_real": 20, "serverless_real": 20}
# Experiments that read the composed model (`model=...`): the smoke runs give them tiny-opt. Elsewhere `model=` would
# be ignored, which is an error (harness.config.check_args), so their multirun goes without it.
READS_MODEL = {"loading", "sllm_loading", "sllm_ablation", "dtype_coldstart", "calibrate", "pipeline_real"}
# Experiments with the loading experiment's runtime axis: their smoke runs fork trials from a zygote (runtimes/
# forkserver.py) instead of paying a fresh interpreter each; tests/experiments/loading measures the fresh runtime.
FORKS = {"loading", "sllm_loading", "sllm_ablation", "dtype_coldstart", "calibrate"}


def _lane(names: list[str], k: int, tmp_path: Path) -> str:
    """A shell line running ``names`` as at most three multiruns (loading family on the forkserver runtime, other
    experiments with and without ``model=tiny-opt``), in order."""
    env = f"COLDSTART_RESULTS={tmp_path / f'results{k}'} COLDSTART_CACHE={tmp_path / f'cache{k}'}"
    lines = []
    for extra, group in (("model=tiny-opt 'runtimes=[forkserver]'", [n for n in names if n in FORKS]),
                         ("model=tiny-opt", [n for n in names if n in READS_MODEL - FORKS]),
                         ("", [n for n in names if n not in READS_MODEL])):
        if group:
            lines.append(f"env {env} {sys.executable} -m harness -m experiment={','.join(group)} smoke=true "
                         f"progress=false {extra}")
    return " && ".join(lines)


@pytest.mark.slow(seconds=70)
def test_every_experiment_runs_in_smoke_mode(tmp_path: Path) -> None:
    """Every experiment as a user starts it (a Hydra multirun, smoke=true); two lanes at once, half the
    experiments each, since each is mostly one process waiting on its trials and the suite has two cores."""
    parts: tuple[list[str], list[str]] = ([], [])
    for name in sorted(options("experiment"), key=lambda n: -SMOKE_COST_S.get(n, 10)):  # longest first, to the
        min(parts, key=lambda p: sum(SMOKE_COST_S.get(n, 10) for n in p)).append(name)  # lighter half
    runs = []
    for k, part in enumerate(parts):
        log = tmp_path / f"run{k}.log"  # a file, not a pipe: neither run may block on output nobody reads yet
        with log.open("w") as f:
            runs.append((part, subprocess.Popen(["bash", "-c", _lane(part, k, tmp_path)], stdout=f,
                                                stderr=subprocess.STDOUT), log, tmp_path / f"results{k}"))
    try:
        for _, proc, _, _ in runs:
            proc.wait(timeout=1200)
    finally:
        for _, proc, _, _ in runs:
            if proc.poll() is None:
                proc.kill()
    for part, proc, log, results in runs:
        err = log.read_text()
        assert proc.returncode == 0, err[-3000:]
        summaries = list((results / "sweeps").rglob("summary.csv"))
        assert len(summaries) == len(part), (part, err[-2000:])
