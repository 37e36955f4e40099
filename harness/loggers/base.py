"""The logger contract: a sink that opens with the run, receives the written run directory, and closes with its
exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig


class Logger(Protocol):
    """What every ``conf/logger/<name>.yaml`` ``_target_`` builds; the runner calls the three methods in order."""

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        """The run begins (before any measurement): open the sink with the resolved config."""
        ...

    def log_run(self, cfg: DictConfig, run_dir: Path, status: dict[str, Any]) -> None:
        """The run's files are written (complete or not, see ``status``): send tables, scalars and figures."""
        ...

    def finish(self, exit_code: int) -> None:
        """Close the sink: 0 for a finished run, 130 for Ctrl-C, 1 for a failure."""
        ...
