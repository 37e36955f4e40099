"""The loading suite: sllm_loading's same-run speedups, the cumulative ablation, per-dtype cold starts and the
calibration file that the serverless simulator reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from experiments.loading.ablation import cumulative_gains, cumulative_variants
from experiments.loading.suite import speedups
from harness.run import run_experiment
from schedulers.calibrated import calibrated


def _summary(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": "m", "dtype": "fp16", "device": "cpu", "loader": loader, "cache_state": state,
                          "n": 5, "load_s_median": t} for loader, state, t in rows])


def test_speedups_are_ratios_of_same_run_medians() -> None:
    table = speedups(_summary([("torch", "warm", 4.0), ("safetensors", "warm", 2.0), ("native", "warm", 0.5),
                               ("native", "hot", 0.25)]))
    native = table[(table.loader == "native") & (table.cache_state == "warm")].iloc[0]
    assert native.speedup_vs_torch == pytest.approx(8.0)
    assert native.speedup_vs_safetensors == pytest.approx(4.0)
    hot = table[table.cache_state == "hot"].iloc[0]
    assert np.isnan(hot.speedup_vs_torch)  # no baseline in that cell: no invented number


def test_cumulative_variants_keep_earlier_steps() -> None:
    variants = cumulative_variants("native", [{"name": "a", "overrides": {"threads": 1, "chunk_bytes": 4096}},
                                              {"name": "b", "overrides": {"chunk_bytes": 8192}},
                                              {"name": "c", "overrides": {"threads": 4}}])
    assert list(variants) == ["a", "b", "c"]
    assert variants["b"]["overrides"] == {"threads": 1, "chunk_bytes": 8192}
    assert variants["c"]["overrides"] == {"threads": 4, "chunk_bytes": 8192}
    with pytest.raises(ValueError, match="used twice"):
        cumulative_variants("native", [{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="no 'name'"):
        cumulative_variants("native", [{"overrides": {}}])


def test_cumulative_gains() -> None:
    gains = cumulative_gains(_summary([("a", "cold", 8.0), ("b", "cold", 4.0), ("c", "cold", 1.0)]), ["a", "b", "c"])
    assert gains.speedup_vs_start.tolist() == [1.0, 2.0, 8.0]
    assert gains.speedup_vs_previous.tolist()[1:] == [2.0, 4.0]


@pytest.fixture
def small(tmp_path: Path) -> list[str]:
    return ["trials=1", "progress=false", "ceiling_max_bytes=1048576", f"storage.root={tmp_path / 'ckpts'}"]


@pytest.mark.slow
def test_sllm_loading_runs_a_ladder(compose_cfg: Callable[..., Any], tmp_path: Path, small: list[str]) -> None:
    cfg = compose_cfg(["experiment=sllm_loading", "models=[tiny-opt,tiny-llama]", "loaders=[torch,native]",
                       "cache_states=[warm]", "delete_checkpoints=true", *small])
    run_experiment(cfg, tmp_path / "run")
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert set(summary.model) == {"tiny-opt", "tiny-llama"}
    assert (summary.n == 1).all()
    table = pd.read_parquet(tmp_path / "run" / "speedups.parquet")
    for _, row in table.iterrows():
        medians = summary[(summary.model == row.model)].set_index("loader").load_s_median
        assert row.speedup_vs_torch == pytest.approx(medians["torch"] / medians[row.loader])
    assert (tmp_path / "run" / "sllm_loading.png").stat().st_size > 10_000
    assert not list((tmp_path / "ckpts").glob("tiny-*"))  # generated one model at a time, then deleted


@pytest.mark.slow
def test_ablation_runs_every_step(compose_cfg: Callable[..., Any], tmp_path: Path, small: list[str]) -> None:
    # smoke: the first step and all the others at once (the full ladder differs only in length)
    cfg = compose_cfg(["experiment=sllm_ablation", "model=tiny-opt", "cache_states=[cold,warm]", "smoke=true",
                       *small])
    run_experiment(cfg, tmp_path / "run")
    gains = pd.read_parquet(tmp_path / "run" / "gains.parquet")
    assert gains[gains.cache_state == "cold"].loader.tolist() == [cfg.ablation_steps[0]["name"], "+all"]
    variants = yaml.safe_load((tmp_path / "run" / "ablation.json").read_text())["variants"]
    assert variants["+all"]["overrides"]["threads"] == 4
    assert variants["per_tensor_reads"]["overrides"]["threads"] == 1
    assert gains.load_s_median.notna().all()
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert trials.ok.all()
    assert (trials.verified_bytes == trials.bytes).all()
    assert (tmp_path / "run" / "sllm_ablation.png").exists()


@pytest.mark.slow
def test_dtype_coldstart_bytes_follow_the_dtype(compose_cfg: Callable[..., Any], tmp_path: Path,
                                               small: list[str]) -> None:
    cfg = compose_cfg(["experiment=dtype_coldstart", "model=tiny-opt", "loaders=[safetensors]",
                       "cache_states=[warm]", *small])
    run_experiment(cfg, tmp_path / "run")
    summary = pd.read_csv(tmp_path / "run" / "summary.csv").set_index("dtype")
    assert set(summary.index) == {"fp32", "fp16", "bf16", "int8"}
    assert summary.loc["fp32", "bytes"] > 1.9 * summary.loc["fp16", "bytes"]
    assert summary.loc["int8", "bytes"] < summary.loc["fp16", "bytes"]
    assert summary.loc["fp32", "cold_start_vs_fp32"] == pytest.approx(1.0)
    assert (tmp_path / "run" / "dtype_coldstart.png").exists()


@pytest.mark.slow
def test_calibration_file_feeds_the_simulator(compose_cfg: Callable[..., Any], tmp_path: Path,
                                              small: list[str]) -> None:
    cfg = compose_cfg(["experiment=calibrate", "models=[tiny-opt]", "link_gbps=1.25", *small])
    run_experiment(cfg, tmp_path / "run")
    path = tmp_path / "run" / "calibration.yaml"
    doc = yaml.safe_load(path.read_text())
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    ok = trials[trials.ok]
    assert doc["tiers"]["ssd"]["bw_gbps"] == pytest.approx(ok[ok.cache_state == "cold"].throughput_gbps.median(),
                                                           rel=1e-3)
    assert doc["tiers"]["dram"]["bw_gbps"] == pytest.approx(ok[ok.cache_state == "hot"].throughput_gbps.median(),
                                                            rel=1e-3)
    assert doc["tiers"]["h2d"]["absent"]  # no CUDA device here: recorded absent, not invented
    assert doc["models"]["tiny-opt"]["build_s"] > 0
    fresh = ok[ok.runtime == "fresh"]
    assert doc["runtimes"]["fresh"]["startup_s"]["tiny-opt"] == pytest.approx(
        (fresh.t_handoff_s + fresh.t_imports_s + fresh.t_device_init_s).median(), rel=1e-3)
    cluster = calibrated(str(path), servers=1, gpus_per_server=1)
    assert cluster.ssd_gbps == pytest.approx(doc["tiers"]["ssd"]["bw_gbps"])
    assert cluster.startup_s("tiny-opt") == doc["runtimes"]["fresh"]["startup_s"]["tiny-opt"] > 0
