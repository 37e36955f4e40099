"""A cluster whose bandwidths and per-model times come from a calibration YAML (written by
`experiment=calibrate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.paths import repo_root
from schedulers.cluster import Cluster, cluster_from_calibration
from schedulers.errors import CalibrationError


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read a calibration file (relative paths are taken from the repository root)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = repo_root() / p
    if not p.exists():
        raise CalibrationError(
            f"calibration file {p} not found; run `coldstart experiment=calibrate` to write one "
            f"or pass cluster.calibration=PATH"
        )
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise CalibrationError(f"calibration file {p} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise CalibrationError(f"calibration file {p} must hold a mapping, got {type(doc).__name__}")
    return doc


def calibrated(calibration: str, name: str = "calibrated", runtime_name: str = "fresh", **overrides: Any) -> Cluster:
    """The ``calibrated`` cluster option: tier bandwidths and model times from ``calibration``, the start-up costs
    of its ``runtimes.<runtime_name>`` entry, shape from overrides."""
    return cluster_from_calibration(load_calibration(calibration), str(calibration), runtime_name=str(runtime_name),
                                    name=name, **overrides)
