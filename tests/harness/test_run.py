"""The runner: nothing measured is lost on Ctrl-C or a failure, a status and an objective per run, short errors."""

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

from harness.run import OnceFilter, run_experiment
from harness.summary import console_table, objective


def _loading(compose_cfg: Callable[..., Any], tmp_path: Path, *extra: str) -> Any:
    return compose_cfg(["model=tiny-opt", "trials=2", "loaders=[safetensors]", "cache_states=[warm,cold]",
                        f"storage.root={tmp_path / 'ckpts'}", "progress=false", "ceiling_max_bytes=1048576",
                        "executor._target_=tests.harness.fakes.InterruptingExecutor", "+executor.after=2", *extra])


@pytest.mark.parametrize(("error", "raised"), [("KeyboardInterrupt", KeyboardInterrupt), ("boom", RuntimeError)])
def test_a_stopped_loading_run_keeps_its_trials_and_ceilings(compose_cfg: Callable[..., Any], tmp_path: Path,
                                                             error: str, raised: type[BaseException]) -> None:
    cfg = _loading(compose_cfg, tmp_path, f"+executor.error={error}")
    out = tmp_path / "run"
    with pytest.raises(raised):
        run_experiment(cfg, out)
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2  # the two trials that ran, nothing invented
    assert trials.ok.all()
    assert (out / "ceilings.json").exists()
    assert len(pd.read_csv(out / "summary.csv")) >= 1
    status = json.loads((out / "status.json").read_text())
    assert status["complete"] is False
    assert ("KeyboardInterrupt" if raised is KeyboardInterrupt else "boom") in status["error"]


def test_a_finished_run_has_a_status_and_its_objective(compose_cfg: Callable[..., Any], tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=serverless", "smoke=true"])
    result = run_experiment(cfg, tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["complete"] is True
    summary = result.tables["summary"]
    assert status["objective"] == pytest.approx(summary.ttft_s_p99.mean())


def test_objective_filters_and_reduces() -> None:
    summary = pd.DataFrame({"loader": ["native", "native", "torch"], "load_s_median": [1.0, 3.0, 10.0]})
    assert objective(summary, {"column": "load_s_median", "where": {"loader": "native"}, "reduce": "mean"}) == 2.0
    assert objective(summary, {"column": "load_s_median", "reduce": "max"}) == 10.0
    with pytest.raises(ValueError, match="not a summary column"):
        objective(summary, {"column": "load_s"})


def test_console_table_rounds_and_caps_rows() -> None:
    df = pd.DataFrame({"policy": [f"p{i}" for i in range(40)], "x": [1 / 3] * 40})
    text = console_table(df, ["policy", "x", "missing"], max_rows=5)
    assert "0.3333" in text
    assert "0.33333" not in text
    assert "35 more rows" in text


def test_each_warning_passes_once() -> None:
    f = OnceFilter()
    import logging

    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "tier small", None, None)
    assert [f.filter(rec) for _ in range(3)] == [True, False, False]
    assert f.repeats() == 2
    info = logging.LogRecord("x", logging.INFO, __file__, 1, "progress", None, None)
    assert all(f.filter(info) for _ in range(3))


def test_a_config_error_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path)}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, "-m", "harness", "experiment=bprr_clustered", "bprr.num_requests=0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    printed = out.stdout + out.stderr  # Hydra's console log goes to stdout
    assert "Traceback" not in printed
    assert "bprr.num_requests=0 is invalid" in printed
    (log,) = tmp_path.rglob("run.log")
    assert "bprr.num_requests=0 is invalid" in log.read_text()  # a failed run's log says why


def _second_call_interrupts(real: Any) -> Any:
    calls = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(("experiment", "module", "name", "table"), [
    ("bprr_optimality", "experiments.placement.optimality", "solve_bprr", "instances.parquet"),
    ("pipeline_real", "experiments.placement.real", "deploy", "requests.parquet"),
])
def test_a_stopped_placement_run_keeps_what_it_finished(compose_cfg: Callable[..., Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, experiment: str,
                                                        module: str, name: str, table: str) -> None:
    """Ctrl-C during the second instance / policy: the first one's rows are written, marked incomplete."""
    import importlib

    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, name, _second_call_interrupts(getattr(mod, name)))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(compose_cfg([f"experiment={experiment}", "smoke=true"]), tmp_path)
    assert len(pd.read_parquet(tmp_path / table)) >= 1
    assert json.loads((tmp_path / "status.json").read_text())["complete"] is False
