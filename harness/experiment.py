"""The contract between the runner and an experiment: a callable that returns tidy tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from omegaconf import DictConfig


@dataclass
class ExperimentResult:
    """What an experiment hands back: tidy tables (written as parquet/CSV) and JSON documents.

    Experiments never write result files themselves; ``harness.results.write_result`` does.
    ``tables`` maps a stem to a frame: ``trials`` → ``trials.parquet``, ``summary`` → ``summary.csv``,
    any other name → ``<name>.parquet``. ``documents`` maps a stem to a JSON-serializable dict.
    """

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Set when the run measured nothing (e.g. every cell infeasible): the runner writes the tables (the failures
    # say why), then raises ExperimentFailedError with this reason, so the command exits non-zero.
    failure: str | None = None


class ExperimentFailedError(RuntimeError):
    """An experiment ran but produced no result rows; the message is its reason and where the tables are."""


class PartialResult(Exception):
    """Raised by an experiment that stopped early (Ctrl-C, an exception): ``result`` holds what it measured so far.

    The runner writes that result with ``complete: false`` in ``status.json``, then re-raises ``cause``.
    """

    def __init__(self, result: ExperimentResult, cause: BaseException) -> None:
        super().__init__(f"stopped early: {cause!r}")
        self.result = result
        self.cause = cause


class Experiment(Protocol):
    """``experiment.run`` in a config: ``_target_`` with ``_partial_: true`` resolving to this signature."""

    def __call__(self, cfg: DictConfig, out_dir: Path) -> ExperimentResult: ...


# ``experiment.plot``: reads a finished run directory and returns the figure paths it wrote.
PlotFn = Callable[[Path], list[Path]]
