"""Loggers: the default does nothing; wandb logs a run's files in disabled/offline mode without an account."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hydra.utils import instantiate

from harness.loggers.wandb import WandbLogger


def _fake_run(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    pd.DataFrame({"loader": ["a"], "load_s": [1.0]}).to_parquet(run_dir / "trials.parquet")
    pd.DataFrame({"loader": ["a"], "n": [1]}).to_csv(run_dir / "summary.csv", index=False)


def test_default_logger_is_none(compose_cfg: Callable[..., Any], tmp_path: Path) -> None:
    cfg = compose_cfg([])
    assert type(instantiate(cfg.logger)).__name__ == "NoneLogger"


def test_wandb_mode_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert WandbLogger(mode="auto").resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger(mode="auto").resolved_mode() == "online"
    with pytest.raises(ValueError, match="offline"):
        WandbLogger(mode="sometimes")


@pytest.mark.parametrize("mode", ["disabled", "offline"])
def test_wandb_logs_a_run(compose_cfg: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          mode: str) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is installed by `make test`")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg(["logger=wandb", f"logger.mode={mode}"])
    run_dir = tmp_path / "run"
    _fake_run(run_dir)
    run = instantiate(cfg.logger).log_run(cfg, run_dir)
    assert run is not None
    if mode == "offline":
        assert list((run_dir / "wandb").glob("offline-run-*")), "offline mode writes a local run directory"
