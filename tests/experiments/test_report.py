"""coldstart-report over real multirun sweeps: jobs whose configurations differ are never merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments import report


def _sweep(tmp_path: Path, *overrides: str) -> Path:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results"), "COLDSTART_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-m", "harness", "-m", *overrides, "progress=false"], check=True,
                   capture_output=True, env=env, timeout=900)
    experiment = next(o.split("=", 1)[1] for o in overrides if o.startswith("experiment="))
    return next((tmp_path / "results" / "sweeps" / experiment).iterdir())


@pytest.mark.slow
def test_report_of_a_loading_sweep_keeps_a_non_cell_knob_apart(tmp_path: Path) -> None:
    """``trial_threads=1,2`` is no cell key, yet its two values are two rows per cell (not one row with n=2)."""
    sweep = _sweep(tmp_path, "experiment=loading", "model=tiny-opt", "dtype=fp16,bf16", "trial_threads=1,2",
                   "trials=1", "loaders=[safetensors]", "cache_states=[warm]", "ceiling_max_bytes=1048576")
    table = pd.read_csv(sweep / "report" / "report.csv")  # written by the multirun callback
    assert len(table) == 4
    assert set(zip(table.dtype, table.trial_threads, strict=True)) == {
        (d, t) for d in ("fp16", "bf16") for t in (1, 2)}
    assert (table.n == 1).all()
    assert (table.status == "ok").all()
    assert (sweep / "report" / "report.png").stat().st_size > 10_000
    assert report.main([str(sweep), "--out", str(tmp_path / "rep")]) == 0  # the command gives the same table
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "rep" / "report.csv"), table)
    for job in (p for p in sweep.iterdir() if (p / "status.json").exists()):
        status = json.loads((job / "status.json").read_text())
        assert status["complete"] is True
        summary = pd.read_csv(job / "summary.csv")  # the objective: native's mean median load time, else NaN
        assert status["objective"] is None or status["objective"] == pytest.approx(summary.load_s_median.mean())


@pytest.mark.slow
def test_report_of_a_simulator_sweep_aggregates_the_seeds(tmp_path: Path) -> None:
    """A seed sweep: the seeds are replicates; each report row is one cell with n = 2 seeds and their spread."""
    sweep = _sweep(tmp_path, "experiment=serverless", "smoke=true", "seed=0,1")
    table = pd.read_csv(sweep / "report" / "report.csv")
    per_job = [pd.read_csv(p) for p in sorted(sweep.glob("*/summary.csv"))]
    assert len(per_job) == 2
    assert len(table) == len(per_job[0])  # one row per cell, the seeds aggregated
    assert "seed" not in table.columns
    assert (table.n == 2).all()
    both = pd.concat(per_job)
    assert table.ttft_s_p99_median.iloc[0] == pytest.approx(both.ttft_s_p99.median())
    plotted = pd.read_csv(sweep / "report" / "report.plotted.csv")
    assert (plotted.n == 2).all()
    for job in sorted(sweep.glob("*/status.json")):
        status = json.loads(job.read_text())
        summary = pd.read_csv(job.parent / "summary.csv")
        assert status["objective"] == pytest.approx(summary.ttft_s_p99.mean())  # serverless's objective


def test_differing_keys_include_a_key_one_job_lacks() -> None:
    configs = [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "x", "c": 3}]
    assert report.differing_keys(configs) == ["b", "c"]


def test_report_on_nothing_is_an_error(tmp_path: Path) -> None:
    assert report.main([str(tmp_path)]) == 2
