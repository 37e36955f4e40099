"""sllm-store comparison: same-run speedups and ceiling fractions from a synthetic trials table, published rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import experiments.loading.reference as ref
from experiments import report
from experiments.loading.sllm_reference import SLLM_STORE_RESULTS
from tests.experiments.runfolders import write_run

FAKE_BYTES = {"qwen3-32b": 65.5e9, "llama-3.1-8b": 16.06e9}


def fake_bytes(model: str, dtype: str) -> int:
    return int(FAKE_BYTES[model])


def _trial(run: str, loader: str, state: str, load_s: float, ok: bool = True, status: str = "ok") -> dict[str, object]:
    size = 1e9
    row: dict[str, object] = {"run": run, "model": "opt-125m", "dtype": "fp16", "device": "cpu", "loader": loader,
                              "cache_state": state, "ok": ok, "status": status, "error": "" if ok else "boom"}
    if ok:
        ceiling = 2.0 if state == "warm" else 0.5
        row.update(bytes=size, load_s=load_s, throughput_gbps=size / load_s / 1e9, ceiling_name="pagecache_read"
                   if state == "warm" else "disk_read", ceiling_gbps=ceiling,
                   ceiling_fraction=size / load_s / 1e9 / ceiling)
    return row


def synthetic_trials() -> pd.DataFrame:
    rows = []
    for state, scale in (("warm", 1.0), ("cold", 3.0)):
        rows += [_trial("r1", "safetensors", state, s * scale) for s in (2.0, 2.2, 1.8)]
        rows += [_trial("r1", "torch", state, s * scale) for s in (4.0, 3.9, 4.4)]
        rows += [_trial("r1", "runai", state, s * scale) for s in (1.0, 0.9, 1.2)]
        rows.append(_trial("r1", "runai", state, np.nan, ok=False, status="failed"))
        rows.append(_trial("r1", "tensorizer", state, np.nan, ok=False, status="unavailable"))
    rows += [_trial("r2", "runai", "warm", 0.5)]  # a run without baselines: no speedup borrowed from r1
    return pd.DataFrame(rows)


def test_measured_speedups_come_from_the_same_run() -> None:
    table = ref.measured_rows(synthetic_trials(), hardware=lambda run: f"machine of {run}")
    cell = table.set_index(["run", "cache_state", "loader"])
    warm = cell.loc[("r1", "warm", "runai")]
    assert warm.n == 3  # the failed trial is not counted
    assert warm.load_s == pytest.approx(1.0)
    assert warm.speedup_vs_safetensors == pytest.approx(2.0)
    assert warm.speedup_vs_torch == pytest.approx(4.0)
    assert warm.ceiling_fraction == pytest.approx(0.5)  # median throughput 1 GB/s of a 2 GB/s ceiling
    cold = cell.loc[("r1", "cold", "runai")]
    assert cold.speedup_vs_safetensors == pytest.approx(2.0)
    assert cold.ceiling_fraction == pytest.approx(1 / 3 / 0.5)
    assert cell.loc[("r1", "warm", "safetensors")].speedup_vs_safetensors == pytest.approx(1.0)
    assert math.isnan(cell.loc[("r2", "warm", "runai")].speedup_vs_safetensors)
    assert ("r1", "warm", "tensorizer") not in cell.index  # unavailable: nothing measured
    assert set(table.hardware) == {"machine of r1", "machine of r2"}
    assert list(table.columns) == ref.COLUMNS


def test_published_rows_are_computed_from_published_times() -> None:
    rows = ref.reference_rows(bytes_of=fake_bytes).set_index(["model", "cache_state"])
    disk = rows.loc[("qwen3-32b", "cold")]
    assert disk.speedup_vs_safetensors == pytest.approx(20.59 / 3.22)
    assert disk.throughput_gbps == pytest.approx(20.3, abs=0.1)  # "~20 GB/s"
    assert disk.ceiling_fraction == pytest.approx(disk.throughput_gbps / 29.4)
    pool = rows.loc[("qwen3-32b", "hot")]
    assert pool.throughput_gbps == pytest.approx(52.4, abs=0.1)  # "~52 GB/s ≈ PCIe Gen5 x16"
    assert 0.9 < pool.ceiling_fraction < 1.0
    paper = rows.loc[("llama-2-70b", "cold")]
    assert paper.speedup_vs_torch == 8.2
    assert paper.speedup_basis == "published speedup"
    assert math.isnan(paper.ceiling_fraction)  # no absolute time published: nothing to compute


def test_computed_speedups_agree_with_the_published_ones() -> None:
    for r in SLLM_STORE_RESULTS:
        if r.load_s and r.safetensors_load_s and r.published_speedup_vs_safetensors:
            assert r.safetensors_load_s / r.load_s == pytest.approx(r.published_speedup_vs_safetensors, rel=0.01)


def test_zoo_bytes_match_the_published_size() -> None:
    for r in SLLM_STORE_RESULTS:
        if r.published_bytes:
            assert ref.zoo_bytes(r.model, r.dtype) == pytest.approx(r.published_bytes, rel=0.005)


def test_report_writes_the_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = synthetic_trials()
    run = write_run(tmp_path / "run", {}, trials[trials.run == "r1"].drop(columns="run"))
    monkeypatch.setattr(ref, "zoo_bytes", fake_bytes)
    assert report.main([str(run), "--out", str(tmp_path / "rep"), "--sllm-reference"]) == 0
    table = pd.read_csv(tmp_path / "rep" / "sllm_comparison.csv")
    assert set(table.source) == {"measured", *(r.source for r in SLLM_STORE_RESULTS)}
    measured = table[table.source == "measured"].set_index(["cache_state", "loader"])
    assert measured.loc[("warm", "runai"), "speedup_vs_torch"] == pytest.approx(4.0)
    assert len(table[table.loader == "sllm-store"]) == len(SLLM_STORE_RESULTS)
    assert list(table.cache_state) == sorted(table.cache_state)  # measured and published side by side per state
