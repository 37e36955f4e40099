"""The do-nothing sink (default): results stay on disk."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


class NoneLogger:
    """Logs nothing."""

    def log_run(self, cfg: DictConfig, run_dir: Path) -> None:
        return None
