"""The do-nothing sink (default): results stay on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


class NoneLogger:
    """Logs nothing."""

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        return None

    def log_run(self, cfg: DictConfig, run_dir: Path, status: dict[str, Any]) -> None:
        return None

    def finish(self, exit_code: int) -> None:
        return None
