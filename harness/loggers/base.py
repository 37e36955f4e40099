"""The logger contract: given the resolved config and a finished run directory, send it somewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig


class Logger(Protocol):
    def log_run(self, cfg: DictConfig, run_dir: Path) -> None: ...
