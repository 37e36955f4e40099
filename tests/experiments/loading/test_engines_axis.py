"""The engines and compile-caches axes of the loading experiment on a tiny model: one row per cell, the new phases
sum with the others to the cold start, every engine's first token is eager's, warm starts restore the artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments.loading.metrics import PHASES
from harness.run import run_experiment


@pytest.mark.slow(seconds=150)
def test_engines_and_compile_caches_are_cells(compose_cfg: Callable[..., Any], tmp_path: Path) -> None:
    cfg = compose_cfg(["model=tiny-opt", "trials=1", "loaders=[safetensors]", "cache_states=[warm]",
                       "engines=[eager,compiled]", "compile_caches=[cold,warm]", "engine_args.compiled.max_seq=32",
                       "decode_tokens=4", f"storage.root={tmp_path / 'ckpts'}", "progress=false",
                       "ceiling_max_bytes=1048576"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    trials = pd.read_parquet(out / "trials.parquet")
    assert trials.ok.all(), trials.error.tolist()
    cells = sorted(zip(trials.engine, trials.compile_cache, strict=True))
    assert cells == [("compiled", "cold"), ("compiled", "warm"), ("eager", "none")]  # eager compiles nothing: one cell
    assert ((trials.cold_start_s - trials[PHASES].sum(axis=1)).abs() < 1e-6).all()  # phases sum to the cold start
    by = trials.set_index(["engine", "compile_cache"])
    eager, cold, warm = by.loc[("eager", "none")], by.loc[("compiled", "cold")], by.loc[("compiled", "warm")]
    assert eager.t_compile_s == eager.t_kv_alloc_s == eager.t_graph_capture_s == 0
    assert cold.t_compile_s > 0
    assert cold.t_kv_alloc_s > 0
    assert cold.t_graph_capture_s == 0
    assert trials.first_token_id.nunique() == 1  # every engine's first token is eager's
    assert (trials.tpot_s > 0).all()
    assert (trials.decode_tokens == 4).all()
    assert cold.compile_cache_status == "cold"
    assert warm.compile_cache_status == "hit"
    assert cold.kv_cache_tokens == 32
    summary = pd.read_csv(out / "summary.csv")
    for col in ("t_compile_s_median", "t_kv_alloc_s_median", "t_graph_capture_s_median", "tpot_s_median",
                "compile_cache_rebuilt"):
        assert col in summary
    assert (out / "loading.png").stat().st_size > 10_000
