"""Run folders as ``coldstart`` writes them (config, status, tables), for tests of what reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml


def write_run(path: Path, config: dict[str, Any], table: pd.DataFrame, complete: bool = True) -> Path:
    """A run folder at ``path``: ``config.yaml``, ``status.json`` and ``table`` (a loading run's ``trials.parquet`` when
    it has ``load_s``, else ``summary.csv``)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "status.json").write_text(json.dumps({"complete": complete, "error": "", "objective": None}))
    if "load_s" in table.columns:
        table.to_parquet(path / "trials.parquet")
        (path / "summary.csv").write_text("n\n1\n")
    else:
        table.to_csv(path / "summary.csv", index=False)
    return path
