"""Peers inside the loading experiment: installed peers load in fresh processes, missing ones are unavailable rows."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.config import option_dict
from harness.run import run_experiment

PEERS = {"runai": "runai_model_streamer", "fastsafetensors": "fastsafetensors", "tensorizer": "tensorizer"}


@pytest.fixture
def missing_options(extra_options: Callable[[str, str, dict[str, Any]], None]) -> None:
    """``<peer>_missing`` options: the real peer loader on a machine without its package (test-only options)."""
    fakes = {"runai_missing": "RunaiMissingLoader", "fastsafetensors_missing": "FastsafetensorsMissingLoader",
             "tensorizer_missing": "TensorizerMissingLoader"}
    for name, cls in fakes.items():
        extra_options("loader", name, {**option_dict("loader", name.removesuffix("_missing")),
                                       "_target_": f"tests.loaders.peer_checks.{cls}"})


@pytest.mark.slow
def test_peers_side_by_side(compose_cfg: Callable[..., Any], tmp_path: Path, missing_options: None) -> None:
    names = ["safetensors", *PEERS, *(f"{p}_missing" for p in PEERS)]
    cfg = compose_cfg(["model=tiny-opt", "trials=1", f"loaders=[{','.join(names)}]", "cache_states=[warm]",
                       f"storage.root={tmp_path / 'ckpts'}", "progress=false", "ceiling_max_bytes=1048576"])
    run_experiment(cfg, tmp_path / "run")
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    summary = pd.read_csv(tmp_path / "run" / "summary.csv").set_index("loader")
    assert sorted(trials.loader) == sorted(names)  # nothing dropped
    for peer, module in PEERS.items():
        missing = summary.loc[f"{peer}_missing"]
        assert missing.status == "unavailable"
        assert "coldstart[peers]" in missing.error
        assert f"{module}_not_installed" in missing.error
        installed = importlib.util.find_spec(module) is not None
        assert summary.loc[peer, "status"] == ("ok" if installed else "unavailable"), summary.loc[peer, "error"]
    ok = trials[trials.ok]
    assert "safetensors" in set(ok.loader)
    assert (ok.verified_bytes == ok.bytes).all()  # every byte checked against the manifest in the trial process
    assert ok.first_token_id.nunique() == 1  # every peer built the same model as the safetensors baseline
    assert set(ok.format) <= {"safetensors", "tensorizer"}
