"""Cluster configuration and calibration files."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedulers.calibrated import calibrated
from schedulers.cluster import Cluster
from schedulers.errors import CalibrationError

EXAMPLE = "schedulers/data/calibration_example.yaml"


def test_calibrated_example_sets_tiers_and_model_times() -> None:
    c = calibrated(EXAMPLE, servers=2)
    assert (c.dram_gbps, c.ssd_gbps, c.remote_gbps) == (24.0, 11.5, 1.15)
    assert c.servers == 2
    assert c.times_for("opt-6.7b#3").build_s == pytest.approx(0.35)


def test_calibration_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not found"):
        calibrated(str(tmp_path / "nope.yaml"))


def test_calibration_missing_tier(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text("tiers:\n  dram: {bw_gbps: 20}\n  ssd: {bw_gbps: 5}\n")
    with pytest.raises(CalibrationError, match="'remote' is missing"):
        calibrated(str(path))


@pytest.mark.parametrize(
    ("key", "value"),
    [("servers", 0), ("gpu_mem_gb", 0.0), ("ssd_gbps", -1.0), ("dram_gb", -5.0), ("load_slots", 0)],
)
def test_bad_cluster_values(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"cluster.{key}"):
        Cluster(**{key: value})  # type: ignore[arg-type]
