"""Every experiment on a real model (loading, sllm_loading, calibrate, serverless_real, pipeline_real): a directory
(``model=local model.path=``), the Hugging Face cache (``model.hf_id=``) or a named option in the user's own config
directory (``hydra.searchpath``); the summaries carry ``model_source`` and ``model_path``, the first token is the
same text whichever loader and runtime produced it, and the user's files are untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.run import run_experiment
from tests.conftest import RealModels
from tests.real_fixtures import copy_tree, tree_state

pytestmark = pytest.mark.slow


def _app(tmp_path: Path, *overrides: str, hf_home: Path | None = None) -> Path:
    """``coldstart OVERRIDES`` in a fresh process (as a user runs it); the run directory it wrote."""
    results = tmp_path / "results"
    env = {**os.environ, "COLDSTART_RESULTS": str(results), "COLDSTART_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(hf_home or tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-m", "harness", "progress=false", *overrides], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    runs = sorted(results.glob("runs/*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def _user_conf(tmp_path: Path, name: str, path: Path) -> Path:
    """A user's own config directory with one real-model option, as the README shows."""
    conf = tmp_path / "my-conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / f"{name}.yaml").write_text(f"_target_: harness.realmodel.RealModel\nname: {name}\n"
                                                 f"path: {path}\n")
    return conf


def test_loading_a_directory_every_loader_and_runtime(compose_cfg: Callable[..., Any], tmp_path: Path,
                                                       real_models: RealModels) -> None:
    model = copy_tree(real_models.opt_bf16_sharded, tmp_path / "my-model")
    before = tree_state(model)
    cfg = compose_cfg(["model=local", f"model.path={model}", "loaders=[native,safetensors,torch]",
                       "runtimes=[fresh,forkserver]", "cache_states=[warm]", "trials=1", "progress=false",
                       f"storage.root={tmp_path / 'store'}", "ceiling_max_bytes=1048576"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    trials = pd.read_parquet(out / "trials.parquet")
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert trials.ok.all(), trials.error.tolist()
    assert len(trials) == 3 * 2
    assert (trials.verified_bytes == trials.bytes).all()
    assert set(summary.model) == {"my-model"}
    assert set(summary.dtype) == {"bf16"}
    assert set(summary.model_source) == {"local"}
    assert set(summary.model_path) == {str(model)}
    assert set(summary.source_dtype) == {"bf16"}
    assert set(summary.cast) == {""}
    assert set(summary.prompt_text) == {str(cfg.prompt_text)}
    assert trials.first_token_id.nunique() == 1  # every loader × runtime: the same first token
    assert trials.first_token_text.nunique() == 1
    assert trials.first_token_text.iloc[0] != ""
    assert set(summary.first_token_text) == {trials.first_token_text.iloc[0]}
    assert tree_state(model) == before  # read, never written


def test_loading_from_the_hub_cache_by_id_with_a_cast(tmp_path: Path, real_models: RealModels) -> None:
    hf_home = real_models.hub.parent
    before = tree_state(hf_home)
    run = _app(tmp_path, "experiment=loading", "model=local", "model.hf_id=org/tiny-opt", "dtype=fp32",
               "loaders=[native]", "cache_states=[warm]", "trials=1", "ceiling_max_bytes=1048576", hf_home=hf_home)
    summary = pd.read_csv(run / "summary.csv", keep_default_na=False)
    assert summary.status.tolist() == ["ok"]
    row = summary.iloc[0]
    assert (row.model, row.model_source, row.model_path) == ("tiny-opt", "hf_cache", str(real_models.hub_snapshot))
    assert (row["dtype"], row.source_dtype, row.cast) == ("fp32", "bf16", "bf16→fp32")  # recorded
    assert row.first_token_text != ""
    assert tree_state(hf_home) == before


def test_named_options_in_a_user_config_dir_list_beside_zoo_models(tmp_path: Path, real_models: RealModels) -> None:
    conf = _user_conf(tmp_path, "my-opt", real_models.opt_bin_single)
    run = _app(tmp_path, f"hydra.searchpath=[file://{conf}]", "experiment=sllm_loading", "models=[my-opt,tiny-opt]",
               "loaders=[torch,safetensors]", "cache_states=[warm]", "trials=1", "ceiling_max_bytes=1048576")
    summary = pd.read_csv(run / "summary.csv", keep_default_na=False).set_index(["model", "loader"])
    assert summary.status.eq("ok").all(), summary.error.tolist()
    assert summary.loc[("my-opt", "torch"), "model_source"] == "local"
    assert summary.loc[("my-opt", "torch"), "dtype"] == "bf16"  # the checkpoint's own (a .bin, read in place)
    assert summary.loc[("tiny-opt", "torch"), "model_source"] == "zoo"
    assert summary.loc[("tiny-opt", "torch"), "dtype"] == "fp16"  # the zoo's default
    assert summary.loc[("my-opt", "safetensors"), "first_token_text"] == \
        summary.loc[("my-opt", "torch"), "first_token_text"] != ""
    assert (run / "speedups.parquet").exists()


def test_calibrate_lists_a_directory_through_model_args(compose_cfg: Callable[..., Any], tmp_path: Path,
                                                        real_models: RealModels) -> None:
    cfg = compose_cfg(["experiment=calibrate", "models=[local]", f"model_args.local.path={real_models.llama_bf16}",
                       "cache_states=[warm]", "link_gbps=1.25", "trials=1", "progress=false",
                       f"storage.root={tmp_path / 'store'}", "ceiling_max_bytes=1048576"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert summary.status.tolist() == ["ok"]
    assert summary.model_source.tolist() == ["local"]
    assert "llama-bf16" in (out / "calibration.yaml").read_text()


def test_serverless_real_serves_a_named_real_model(tmp_path: Path, real_models: RealModels) -> None:
    conf = _user_conf(tmp_path, "my-llama", real_models.llama_bf16)
    run = _app(tmp_path, f"hydra.searchpath=[file://{conf}]", "experiment=serverless_real", "smoke=true",
               'workload.models=["my-llama#0","my-llama#1"]')
    requests = pd.read_parquet(run / "requests.parquet")
    summary = pd.read_csv(run / "summary.csv", keep_default_na=False)
    assert (requests.status == "done").all(), requests.error.tolist()
    assert set(requests.model_source) == {"local"}
    assert set(requests.model_path) == {str(real_models.llama_bf16)}
    assert summary.model_source.tolist() == ["local"]
    colds = pd.read_parquet(run / "cold_starts.parquet")
    assert len(colds)
    assert set(colds.model_source) == {"local"}


def test_pipeline_real_splits_the_real_layers(compose_cfg: Callable[..., Any], tmp_path: Path,
                                              real_models: RealModels) -> None:
    cfg = compose_cfg(["experiment=pipeline_real", "model=local", f"model.path={real_models.llama_bf16}",
                       "smoke=true", "progress=false"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert summary.tokens_match_reference.all()  # the chain's greedy tokens = the whole real model's
    assert set(summary.model_source) == {"local"}
    assert set(summary.cast) == {"bf16→fp32"}  # pipeline.dtype=fp32 on CPU: a recorded cast
    placements = pd.read_parquet(out / "placements.parquet")
    assert all(sum(c) >= 2 for c in placements["count"])  # blocks = the model's own 2 layers


def test_two_listed_models_of_one_name_are_refused_before_any_trial(compose_cfg: Callable[..., Any], tmp_path: Path,
                                                                    real_models: RealModels) -> None:
    from harness.config import ConfigError

    cfg = compose_cfg(["experiment=sllm_loading", "models=[local,tiny-opt]",
                       f"model_args.local.path={real_models.opt_fp32_single}", "model_args.local.name=tiny-opt",
                       "dtype=fp32", f"storage.root={tmp_path / 'store'}", "progress=false"])
    with pytest.raises(ConfigError, match=r"both named 'tiny-opt'.*model_args\.local\.name"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "store").exists()  # refused before anything was written
