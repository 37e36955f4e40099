"""Sweeps past one machine: Hydra's submitit launcher (the ``submitit`` extra), tried with its local executor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd


def test_a_multirun_through_the_submitit_launcher(tmp_path: Path) -> None:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results")}
    out = subprocess.run([sys.executable, "-m", "harness", "-m", "experiment=bprr_optimality", "smoke=true",
                          "seed=0,1", "progress=false", "hydra/launcher=submitit_local"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (sweep,) = (tmp_path / "results" / "sweeps" / "bprr_optimality").iterdir()
    jobs = sorted(p.parent for p in sweep.glob("*/summary.csv"))
    assert [j.name for j in jobs] == ["0_seed=0_smoke=True", "1_seed=1_smoke=True"]  # short, shell-safe names
    assert all((j / "status.json").exists() for j in jobs)
    report = pd.read_csv(sweep / "report" / "report.csv")  # the sweep's report once every job is done
    assert (report.n == 2).all()  # the two seeds are the replicates of one row
