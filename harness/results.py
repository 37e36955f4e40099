"""Writing an experiment's tables and documents under its run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness.experiment import ExperimentResult

# documents also written as YAML, for files that configs read (cluster=calibrated cluster.calibration=...)
YAML_DOCUMENTS = {"calibration"}
TABLE_FILES = {"trials": "trials.parquet", "summary": "summary.csv", "requests": "requests.parquet"}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON, atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default, sort_keys=False) + "\n")
    tmp.replace(path)


def write_yaml(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as YAML (plain types only), atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(json.loads(json.dumps(doc, default=_json_default)), sort_keys=False))
    tmp.replace(path)


def write_table(path: Path, df: pd.DataFrame) -> None:
    """Write a frame as parquet or CSV by suffix, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    tmp.replace(path)


def table_path(out_dir: Path, name: str) -> Path:
    return out_dir / TABLE_FILES.get(name, f"{name}.parquet")


def write_result(out_dir: Path, result: ExperimentResult) -> list[Path]:
    """Write every table and document of ``result`` under ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in result.tables.items():
        path = table_path(out_dir, name)
        write_table(path, df)
        if path.suffix == ".parquet" and name in ("summary",):
            write_table(path.with_suffix(".csv"), df)
        written.append(path)
    for name, doc in result.documents.items():
        path = out_dir / f"{name}.json"
        write_json(path, doc)
        if name in YAML_DOCUMENTS:
            write_yaml(path.with_suffix(".yaml"), doc)
        written.append(path)
    return written


def read_trials(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / TABLE_FILES["trials"])
