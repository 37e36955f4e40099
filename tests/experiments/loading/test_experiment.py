"""The loading experiment end to end on a tiny model: rows, summary, ceilings, failures recorded, figure drawn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import experiments.loading.experiment as loading
from experiments.loading.metrics import PHASES
from harness.run import run_experiment


@pytest.fixture
def fake_options(extra_options: Callable[[str, str, dict[str, Any]], None]) -> None:
    """Extra loader options that exist only in this test (conf/loader stays the real registry)."""
    extra_options("loader", "crashing", {"_target_": "tests.harness.fakes.CrashingLoader"})
    extra_options("loader", "missing", {"_target_": "tests.harness.fakes.MissingPackageLoader"})


@pytest.mark.slow
def test_loading_experiment(compose_cfg: Callable[..., Any], tmp_path: Path, fake_options: None) -> None:
    cfg = compose_cfg(["model=tiny-opt", "trials=2", "loaders=[safetensors,torch_mmap,crashing,missing]",
                       f"storage.root={tmp_path / 'ckpts'}", "progress=false", "ceiling_max_bytes=1048576"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    trials = pd.read_parquet(out / "trials.parquet")
    summary = pd.read_csv(out / "summary.csv")
    states = list(cfg.cache_states)
    assert {"cold", "warm", "hot"} <= set(states)
    assert len(trials) == 2 * len(states) * 4  # trials × cache states × loaders: nothing dropped
    hot = summary[summary.cache_state == "hot"].set_index("loader")
    assert hot.loc["safetensors", "status"] == "unavailable"  # no DRAM tier of its own: a visible row, not a drop
    ok = trials[trials.ok]
    assert set(ok.loader) == {"safetensors", "torch_mmap"}
    assert (ok.load_s > 0).all()
    assert (ok.cold_start_s > ok.load_s).all()
    phases = ok[PHASES].sum(axis=1)  # hand-off, imports, device init, weights, build, first token
    assert ((ok.cold_start_s - phases).abs() < 1e-6).all()
    assert (ok.verified_bytes == ok.bytes).all()
    assert (ok[ok.cache_state == "cold"].resident_fraction <= 0.02).all()
    assert (ok[ok.cache_state == "warm"].resident_fraction > 0.99).all()
    assert (ok.ceiling_fraction == ok.throughput_gbps / ok.ceiling_gbps).all()
    assert set(ok[ok.cache_state == "warm"].ceiling_name) == {"pagecache_read"}
    assert ok.first_token_id.nunique() == 1  # every loader built the same model
    by_loader = summary.set_index(["loader", "cache_state"])
    assert by_loader.loc[("crashing", "cold"), "status"] == "failed"
    assert "exploded" in by_loader.loc[("crashing", "cold"), "error"]
    assert by_loader.loc[("missing", "warm"), "status"] == "unavailable"
    assert "coldstart[peers]" in by_loader.loc[("missing", "warm"), "error"]
    assert by_loader.loc[("safetensors", "warm"), "n"] == 2
    for col in ("load_s_median", "load_s_iqr", "load_s_min", "load_s_max", "throughput_gbps_median",
                "ceiling_fraction_median", "cold_start_s_median"):
        assert col in summary
    assert (out / "ceilings.json").exists()
    assert (out / "environment.json").exists()
    assert (out / "loading.png").stat().st_size > 10_000


def test_forced_copies_cold_method(compose_cfg: Callable[..., Any], tmp_path: Path) -> None:
    cfg = compose_cfg(["model=tiny-opt", "trials=2", "loaders=[safetensors]", "cache_states=[cold]",
                       "cold_method=copies", f"storage.root={tmp_path / 'ckpts'}", "progress=false",
                       "ceiling_max_bytes=1048576", "verify=true"])
    run_experiment(cfg, tmp_path / "run")
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert trials.ok.all()
    assert set(trials.cold_method) == {"copies"}
    assert not (tmp_path / "ckpts" / "copies" / "run").exists()  # copies are removed after the run


def test_bad_settings_are_named(compose_cfg: Callable[..., Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no-such"):
        run_experiment(compose_cfg(["model=tiny-opt", "loaders=[no-such]", f"storage.root={tmp_path}"]),
                       tmp_path / "a")
    with pytest.raises(ValueError, match="lukewarm"):
        run_experiment(compose_cfg(["model=tiny-opt", "cache_states=[lukewarm]"]), tmp_path / "b")
    with pytest.raises(ValueError, match="device"):
        loading.resolve_device("tpu")


def test_smoke_runs_ours_and_the_first_other_loader() -> None:
    from experiments.loading.experiment import smoke_loaders

    assert smoke_loaders(["torch", "safetensors", "native", "runai"]) == ["native", "torch"]
    assert smoke_loaders(["safetensors", "torch"]) == ["safetensors", "torch"]
    assert smoke_loaders(["native"]) == ["native"]


def test_a_dram_tier_too_small_for_hot_is_a_failed_row(compose_cfg: Callable[..., Any], tmp_path: Path) -> None:
    """The native loader's tier refuses the checkpoint: hot rows say why, and the other states still run."""
    cfg = compose_cfg(["model=tiny-opt", "trials=1", "loaders=[native]", "cache_states=[warm,hot]",
                       "loader_args.native.dram_capacity_bytes=1000",
                       f"loader_args.native.dram_dir={tmp_path / 'dram'}",
                       f"storage.root={tmp_path / 'ckpts'}", "progress=false", "ceiling_max_bytes=1048576"])
    run_experiment(cfg, tmp_path / "run")
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet").set_index("cache_state")
    assert trials.loc["hot", "status"] == "failed"
    assert "DRAM tier" in trials.loc["hot", "error"]
    assert trials.loc["warm", "status"] == "ok"
