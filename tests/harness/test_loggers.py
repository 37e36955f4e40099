"""Loggers: the default does nothing; W&B runs offline without an account, and what it logged is read back from
its own run files (``wandb leet inspect --json``), not from a mock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hydra.utils import instantiate

from experiments import wandb_report
from harness.loggers.wandb import WandbLogger, cell_metrics

WANDB = Path(sys.executable).with_name("wandb")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "HYDRA_FULL_ERROR")}
    return {**env, "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
            "COLDSTART_RESULTS": str(tmp_path / "results")}


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of one offline run, as W&B itself reads its transaction log."""
    out = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def summary_of(recs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in recs:
        if r["type"] == "summary":
            out.update(r["summary"].get("update", {}))
    return out


def test_default_logger_is_none(compose_cfg: Callable[..., Any]) -> None:
    assert type(instantiate(compose_cfg([]).logger)).__name__ == "NoneLogger"


def test_wandb_mode_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert WandbLogger(mode="auto").resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger(mode="auto").resolved_mode() == "online"
    with pytest.raises(ValueError, match="offline"):
        WandbLogger(mode="sometimes")


def test_group_and_job_type_are_config_keys(compose_cfg: Callable[..., Any]) -> None:
    cfg = compose_cfg(["logger=wandb", "logger.group=mine", "logger.job_type=probe"])
    logger = instantiate(cfg.logger)
    assert (logger.group, logger.job_type) == ("mine", "probe")


def test_cell_metrics_name_each_cell_by_the_keys_that_vary() -> None:
    summary = pd.DataFrame({"model": ["m", "m"], "loader": ["native", "torch"], "cache_state": ["cold", "cold"],
                            "load_s_median": [0.5, 2.0], "status": ["ok", "ok"]})
    assert cell_metrics(summary, ["model", "loader", "cache_state"]) == {"load_s_median/loader=native": 0.5,
                                                                        "load_s_median/loader=torch": 2.0}
    rates = pd.DataFrame({"policy": ["serverless", "serverless"], "storage": ["ssd_only", "ssd_only"],
                          "rps": [1.4, 0.5], "cv": [8.0, 8.0], "ttft_s_p99": [3.0, 1.0]})
    assert cell_metrics(rates, ["policy", "storage", "rps", "cv"]) == {"ttft_s_p99/rps=1.4": 3.0,
                                                                      "ttft_s_p99/rps=0.5": 1.0}


@pytest.mark.slow
def test_an_offline_sweep_logs_config_group_scalars_figures_and_exit_codes(tmp_path: Path) -> None:
    env = _env(tmp_path)
    cmd = [sys.executable, "-m", "harness", "-m", "experiment=serverless", "smoke=true", "seed=0,1", "logger=wandb",
           "logger.mode=offline", "progress=false"]
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    (sweep,) = (tmp_path / "results" / "sweeps" / "serverless").iterdir()
    runs = sorted((sweep / "wandb").glob("offline-run-*"))  # one offline folder for the whole sweep
    assert len(runs) == 2
    seeds = set()
    for run in runs:
        recs = records(run)
        (header,) = [r["run"] for r in recs if r["type"] == "run"]
        assert header["run_group"] == f"serverless/{sweep.name}"
        assert header["job_type"] == "serverless"
        seeds.add(header["config"]["update"]["seed"])
        summary = summary_of(recs)
        assert summary["complete"] is True
        assert summary["objective"] == pytest.approx(summary["ttft_s_p99"])  # one cell: the objective is its P99
        assert any(k.startswith("latency_cdf") for k in summary)  # the figures were logged
        assert [r["exit"]["exit_code"] for r in recs if r["type"] == "exit"] == [0]
    assert len(seeds) == 2
    md, page = wandb_report.write_local(sweep, "test sweep")  # the offline W&B report: same panels, local pages
    text = md.read_text()
    assert "seed" in text
    assert "objective" in text
    shown = page.read_text()
    assert shown.count('src="data:image/png;base64,') == len(wandb_report._figures(sweep)) >= 2  # inlined
    assert shown.count("<figcaption>report.png</figcaption>") == 1  # the sweep's figure once, not again as a job's
    report = wandb_report.build_report(sweep, "test sweep", "an-entity", "coldstart")  # online: built, not saved
    (grid,) = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    (coords,) = [p for p in grid.panels if type(p).__name__ == "ParallelCoordinatesPlot"]
    assert [str(c.metric.name) for c in coords.columns] == ["seed", "objective"]


@pytest.mark.slow
def test_a_failed_run_finishes_its_wandb_run_with_a_nonzero_exit_code(tmp_path: Path) -> None:
    env = _env(tmp_path)
    cmd = [sys.executable, "-m", "harness", "experiment=bprr_clustered", "bprr.num_requests=0", "logger=wandb",
           "logger.mode=offline"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2
    (run,) = (tmp_path / "results" / "runs" / "bprr_clustered").glob("*/wandb/offline-run-*")
    exits = [r["exit"].get("exit_code", 0) for r in records(run) if r["type"] == "exit"]
    assert exits == [1]


@pytest.mark.slow
def test_wandb_scalar_names_carry_their_keys(tmp_path: Path) -> None:
    """Read back from the offline run: ``ttft_s_p99/policy=serverlessllm/storage=…/…`` names every key that varies
    between the summary's cells, each as key=value (never a bare, positional value)."""
    env = _env(tmp_path)
    cmd = [sys.executable, "-m", "harness", "experiment=sllm_scheduler", "smoke=true", "logger=wandb",
           "logger.mode=offline", "progress=false"]
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    (run,) = (tmp_path / "results" / "runs" / "sllm_scheduler").glob("*/wandb/offline-run-*")
    names = [k for k in summary_of(records(run)) if k.startswith("ttft_s_p99/")]
    summary = pd.read_csv(next((tmp_path / "results" / "runs" / "sllm_scheduler").glob("*/summary.csv")))
    assert len(names) == len(summary)  # one scalar per cell
    for name in names:
        parts = name.split("/")[1:]
        assert parts
        assert all("=" in p for p in parts), name
        assert {p.split("=")[0] for p in parts} <= {"policy", "storage", "scenario", "tokens", "rps", "cv"}
    assert any(n.startswith("ttft_s_p99/policy=serverlessllm/") for n in names)
