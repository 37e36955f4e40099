"""Every option of every serverless group instantiates standalone; every experiment runs with smoke=true."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from harness.config import CONF_DIR, options
from harness.results import write_result

GROUPS = ("cluster", "workload", "scheduler", "keepalive")
EXPERIMENTS = ("serverless", "sllm_scheduler", "sllm_e2e", "keepalive", "sllm_regime")


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_instantiates(compose_cfg: Callable[..., DictConfig], group: str, option: str) -> None:
    cfg = compose_cfg("experiment=serverless", f"{group}={option}")
    obj = instantiate(cfg[group])
    if group in ("cluster", "workload"):
        return
    # the option names its class ("hybrid_histogram"), or is a variant of another option ("fixed_short")
    base = option if option.replace("_", "") in type(obj).__name__.lower() else option.rsplit("_", 1)[0]
    assert base in options(group)
    assert base.replace("_", "") in type(obj).__name__.lower()


def test_experiment_files_are_deltas() -> None:
    for name in EXPERIMENTS:
        lines = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
        assert lines[0] == "# @package _global_"
        assert lines[1].startswith(f"# coldstart experiment={name}")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_smoke_runs_and_plots(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, name: str
) -> None:
    cfg = compose_cfg(f"experiment={name}", "smoke=true")
    result = instantiate(cfg.experiment.run)(cfg, tmp_path)
    write_result(tmp_path, result)
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(requests) > 0
    assert {
        "ttft_s_p50",
        "ttft_s_p99",
        "e2e_s_mean",
        "e2e_s_p99",
        "cold_start_rate",
        "migrations",
        "timeouts",
        "gpu_seconds",
    } <= set(summary.columns)
    figures = instantiate(cfg.experiment.plot)(tmp_path)
    assert figures
    assert all(p.exists() for p in figures)
    assert {p.suffix for p in figures} == {".png", ".pdf"}  # every figure in both formats


def test_same_seed_same_requests(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    frames = []
    for k in range(2):
        cfg = compose_cfg("experiment=sllm_scheduler", "smoke=true", "seed=7")
        out = tmp_path / str(k)
        write_result(out, instantiate(cfg.experiment.run)(cfg, out))
        frames.append(pd.read_parquet(out / "requests.parquet"))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    cfg = compose_cfg("experiment=sllm_scheduler", "smoke=true", "seed=8")
    other = instantiate(cfg.experiment.run)(cfg, tmp_path / "x").tables["requests"]
    assert not other["arrival_s"].equals(frames[0]["arrival_s"])


def test_sllm_scheduler_runs_every_storage_setting_side_by_side(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """The three storage settings on the same workload: only the named policies lose their DRAM cache."""
    cfg = compose_cfg("experiment=sllm_scheduler", "smoke=true")
    summary = instantiate(cfg.experiment.run)(cfg, tmp_path).tables["summary"]
    caches = summary.drop_duplicates(["storage", "policy"]).set_index(["storage", "policy"])["cache_to"].to_dict()
    assert caches == {
        ("shared", "serverlessllm"): "dram+ssd", ("shared", "serverless"): "dram+ssd",
        ("shared", "shepherd"): "dram+ssd", ("baselines_ssd", "serverlessllm"): "dram+ssd",
        ("baselines_ssd", "serverless"): "ssd", ("baselines_ssd", "shepherd"): "ssd",
        ("ssd_only", "serverlessllm"): "ssd", ("ssd_only", "serverless"): "ssd", ("ssd_only", "shepherd"): "ssd",
    }
    assert summary["tier_upgrade"].all()
    shared = summary[summary["storage"] == "shared"].reset_index(drop=True)
    alone = compose_cfg("experiment=sllm_scheduler", "smoke=true", "experiment.storage=null")
    plain = instantiate(alone.experiment.run)(alone, tmp_path / "plain").tables["summary"]
    cols = ["ttft_s_p99", "timeouts", "loads"]
    pd.testing.assert_frame_equal(shared[cols], plain[cols])


def test_storage_settings_name_listed_policies_and_do_not_clash(compose_cfg: Callable[..., DictConfig]) -> None:
    from experiments.serverless.simulated import storage_settings
    from harness.config import ConfigError

    cfg = compose_cfg("experiment=sllm_scheduler", "+experiment.storage.x.nope={cache_to: [ssd]}")
    with pytest.raises(ConfigError, match=r"experiment.storage.x.nope: 'nope' is not a listed policy"):
        storage_settings(cfg)
    cfg = compose_cfg("experiment=sllm_scheduler", "scheduler_args.serverless.cache_to=[dram]")
    with pytest.raises(ConfigError, match=r"scheduler_args.serverless overrides \['cache_to'\]"):
        storage_settings(cfg)
    cfg = compose_cfg("experiment=sllm_scheduler", "scheduler_args.serverless.tier_upgrade=false")
    assert set(storage_settings(cfg)) == {"shared", "baselines_ssd", "ssd_only"}
