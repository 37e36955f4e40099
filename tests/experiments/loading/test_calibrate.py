"""The calibration file's runtimes section, from hand-made trials tables (the real writer, no loads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from experiments.loading.calibrate import _merge_runtimes, calibration_document
from schedulers.calibrated import calibrated
from schedulers.cluster import RuntimeTimes
from schedulers.errors import CalibrationError

# per runtime: (hand-off, imports, device init) of each trial, and the model build
PHASES = {"fresh": [(0.3, 4.0, 0.2), (0.5, 4.4, 0.2), (0.4, 4.2, 0.3)], "pool": [(0.01, 0.0, 0.0), (0.03, 0.0, 0.0),
                                                                             (0.02, 0.01, 0.0)]}
BUILD_S = {"fresh": 0.25, "pool": 0.1}
POOL = {"name": "pool", "size": 2, "start_s": [7.0, 9.0, 8.0]}


def _trials(runtimes: tuple[str, ...] = ("fresh", "pool")) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for rt in runtimes:
        for model, nbytes, extra in (("opt-125m", 250_000_000, 0.0), ("opt-1.3b", 2_600_000_000, 1.0)):
            for state in ("cold", "hot"):
                for handoff, imports, device in PHASES[rt]:
                    rows.append({"ok": True, "loader": "native", "model": model, "bytes": nbytes, "device": "cpu",
                                 "cache_state": state, "runtime": rt, "throughput_gbps": 2.0, "ceiling_gbps": 4.0,
                                 "t_handoff_s": handoff, "t_imports_s": imports + extra, "t_device_init_s": device,
                                 "t_weights_s": 0.5, "t_model_build_s": BUILD_S[rt], "t_first_token_s": 0.04})
    rows.append({**rows[0], "ok": False, "loader": "native", "t_handoff_s": 99.0})  # failed: never counted
    return pd.DataFrame(rows)


def _document(trials: pd.DataFrame, described: dict[str, Any]) -> dict[str, Any]:
    return calibration_document(trials, {}, {"runtimes": described}, "native", 1.25)


def test_runtimes_section_per_runtime_and_model() -> None:
    doc = _document(_trials(), {"fresh": {"name": "fresh"}, "pool": POOL})
    fresh, pool = doc["runtimes"]["fresh"], doc["runtimes"]["pool"]
    assert fresh["kind"] == "fresh"
    assert fresh["handoff_s"] == pytest.approx(0.4)
    # median of hand-off + imports + device init per model: 4.5, 5.1, 4.9 → 4.9 (opt-1.3b imports 1 s more)
    assert fresh["startup_s"] == pytest.approx({"opt-125m": 4.9, "opt-1.3b": 5.9})
    assert "worker_start_s" not in fresh
    assert pool["kind"] == "pool"
    assert pool["handoff_s"] == pytest.approx(0.02)
    assert pool["startup_s"]["opt-125m"] == pytest.approx(0.03)  # 0.01, 0.03, 0.03
    assert (pool["size"], pool["worker_start_s"]) == (2, pytest.approx(8.0))
    # the models' build is the model build only, from the fresh baseline (not the pool's warmed-up workers)
    assert doc["models"]["opt-1.3b"]["build_s"] == pytest.approx(0.25)


def test_a_runtime_without_successful_trials_is_absent() -> None:
    trials = _trials(("fresh",))
    doc = _document(trials, {"fresh": {"name": "fresh"}, "pool": POOL})
    assert doc["runtimes"]["pool"]["absent"]
    assert "no successful native trial" in doc["runtimes"]["pool"]["reason"]


def test_trials_without_runtime_columns_write_no_runtimes_section() -> None:
    trials = _trials().drop(columns=["runtime", "t_handoff_s"])
    assert "runtimes" not in _document(trials, {})


def test_the_calibrated_cluster_reads_each_runtime(tmp_path: Path) -> None:
    path = tmp_path / "calibration.yaml"
    doc = _document(_trials(), {"fresh": {"name": "fresh"}, "pool": POOL})
    path.write_text(yaml.safe_dump(doc))
    fresh = calibrated(str(path))
    assert fresh.runtime == RuntimeTimes()
    assert fresh.startup_s("opt-1.3b#4") == pytest.approx(5.9)
    pool = calibrated(str(path), runtime_name="pool")
    assert pool.runtime == RuntimeTimes("pool", handoff_s=0.02, pool_size=2, worker_start_s=8.0)  # 5 figures
    doc["runtimes"]["pool"] = {"kind": "pool", "absent": True, "reason": "it broke"}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CalibrationError, match=r"runtimes.pool is absent \(it broke\)"):
        calibrated(str(path), runtime_name="pool")


def test_worker_starts_of_every_cell_count() -> None:
    merged = _merge_runtimes([{"fresh": {"name": "fresh"}, "pool": {**POOL, "start_s": [1.0]}},
                              {"fresh": {"name": "fresh"}, "pool": {**POOL, "start_s": [2.0, 3.0]}}])
    assert merged["pool"]["start_s"] == [1.0, 2.0, 3.0]
    assert merged["fresh"] == {"name": "fresh"}


def test_engine_phases_per_engine_and_engine_s_for_one_engine(tmp_path: Path) -> None:
    eager = _trials(("fresh",)).assign(engine="eager", t_kv_alloc_s=0.0, t_compile_s=0.0, t_graph_capture_s=0.0,
                                       tpot_s=0.02)
    compiled = _trials(("fresh",)).assign(engine="compiled", t_kv_alloc_s=0.1, t_compile_s=30.0,
                                          t_graph_capture_s=0.0, tpot_s=0.01, t_model_build_s=9.0)
    both = _document(pd.concat([eager, compiled], ignore_index=True), {"fresh": {"name": "fresh"}})
    model = both["models"]["opt-125m"]
    assert model["build_s"] == pytest.approx(0.25)  # eager's build: engines are never pooled
    assert model["engines"]["compiled"]["compile_s"] == pytest.approx(30.0)
    assert model["engines"]["eager"]["tpot_s"] == pytest.approx(0.02)
    assert "engine_s" not in model  # two engines: calibrate with the one to simulate
    one = _document(compiled, {"fresh": {"name": "fresh"}})["models"]["opt-125m"]
    assert one["engine_s"] == pytest.approx(30.1)
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(_document(compiled, {"fresh": {"name": "fresh"}})))
    assert calibrated(str(path)).times_for("opt-125m").engine_s == pytest.approx(30.1)
