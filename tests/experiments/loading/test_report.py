"""coldstart-report over a real multirun sweep of the loading experiment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments.loading import report


@pytest.mark.slow
def test_report_aggregates_a_sweep(tmp_path: Path) -> None:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results"), "COLDSTART_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "harness", "-m", "experiment=loading", "model=tiny-opt,tiny-llama",
           "dtype=fp16,bf16", "trials=1", "loaders=[safetensors]", "cache_states=[warm]", "progress=false",
           "ceiling_max_bytes=1048576"]
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=900)
    sweep = next((tmp_path / "results" / "sweeps" / "loading").iterdir())
    assert report.main([str(sweep), "--out", str(tmp_path / "rep")]) == 0
    table = pd.read_csv(tmp_path / "rep" / "report.csv")
    assert set(zip(table.model, table.dtype, strict=True)) == {
        (m, d) for m in ("tiny-opt", "tiny-llama") for d in ("fp16", "bf16")}
    assert (table.n == 1).all()
    assert (table.status == "ok").all()
    assert (tmp_path / "rep" / "report.png").stat().st_size > 10_000
    trials = pd.read_parquet(tmp_path / "rep" / "trials.parquet")
    assert trials.overrides.str.contains("dtype=bf16").any()


def test_report_on_nothing_is_an_error(tmp_path: Path) -> None:
    assert report.main([str(tmp_path)]) == 2
