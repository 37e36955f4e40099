"""Every command-line override reaches the object it names, and one that would be ignored is an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from experiments.placement.bprr import _policies
from experiments.serverless.simulated import build_policy, policies_of
from harness.config import ConfigError, check_args, compose_config, listed, option
from tests.harness.fakes import RecordingExecutor


def test_loader_args_reach_the_trial_spec(tmp_path: Path) -> None:
    """loading: ``loader_args.native.threads=8`` is in the spec the trial process receives."""
    cfg = compose_config(["experiment=loading", "model=tiny-opt", "loaders=[native,safetensors]", "trials=1",
                          "cache_states=[warm]", "loader_args.native.threads=8", f"storage.root={tmp_path}",
                          "executor._target_=tests.harness.fakes.RecordingExecutor", "progress=false",
                          "ceiling_max_bytes=1048576"])
    RecordingExecutor.specs.clear()
    instantiate(cfg.experiment.run)(cfg, tmp_path / "run")
    by_target = {s["loader"]["_target_"].rsplit(".", 1)[-1]: s["loader"] for s in RecordingExecutor.specs}
    assert by_target["NativeLoader"]["threads"] == 8
    assert option("loader", "native").threads != 8  # the YAML's own value was something else
    assert "threads" not in by_target["SafetensorsLoader"]


def test_misspelt_key_lists_the_valid_keys() -> None:
    cfg = compose_config(["experiment=loading", "loader_args.native.thread=8"])
    with pytest.raises(ConfigError, match=r"no key 'thread'.*'threads'"):
        check_args(cfg, {"loader": ["native"]}, singles=("model",))


def test_args_for_an_option_the_run_does_not_use_are_an_error() -> None:
    cfg = compose_config(["experiment=loading", "loaders=[torch]", "loader_args.native.threads=8"])
    with pytest.raises(ConfigError, match=r"loader_args.native: 'native' is not one of .*\['torch'\]"):
        instantiate(cfg.experiment.run)(cfg, Path("/nonexistent"))
    cfg = compose_config(["experiment=sllm_scheduler", "placement_args.petals.rebalance_rounds=1"])
    with pytest.raises(ConfigError, match="lists no placement options"):
        instantiate(cfg.experiment.run)(cfg, Path("/nonexistent"))


def test_scheduler_args_reach_the_policy_object() -> None:
    """serverless: ``scheduler_args.serverlessllm.migration=false`` is the scheduler object's field."""
    cfg = compose_config(["experiment=sllm_scheduler", "scheduler_args.serverlessllm.migration=false",
                          "keepalive_args.fixed.keep_alive_s=42"])
    built = {name: build_policy(cfg, entry) for name, entry in policies_of(cfg)}
    assert built["serverlessllm"][0].migration is False
    assert all(keep.keep_alive_s == 42 for _, keep in built.values())
    default = compose_config(["experiment=sllm_scheduler"])
    assert build_policy(default, policies_of(default)[0][1])[0].migration is True


def test_run_args_may_not_merge_entries_that_differ() -> None:
    """keepalive: the entries differ by keep_alive_s on purpose; overriding it for all would merge them."""
    cfg = compose_config(["experiment=keepalive", "keepalive_args.fixed.keep_alive_s=5"])
    entry = policies_of(cfg)[0][1]
    with pytest.raises(ConfigError, match=r"keep_alive_s.*per entry"):
        listed(cfg, "keepalive", "fixed", entry.keepalive_args)


def test_placement_args_reach_the_placement_object() -> None:
    cfg = compose_config(["experiment=bprr_clustered", "placement_args.petals.rebalance_rounds=2"])
    policies = {p.name: p for p in _policies(cfg, cfg.bprr.policies, False, cfg.bprr)}
    assert policies["petals"].placement.rebalance_rounds == 2
    assert policies["petals"].placement_name == "petals"


@pytest.mark.parametrize(("overrides", "message"), [
    (["experiment=sllm_scheduler", "model=tiny-opt"], "override 'model=tiny-opt' would be ignored"),
    (["experiment=loading", "loader=native", "loader.threads=8"],
     "loader_args.<option>.<key>"),
    (["experiment=sllm_loading", "model=opt-1.3b"], "composes the model options"),
])
def test_an_override_nothing_reads_fails_the_run(tmp_path: Path, overrides: list[str], message: str) -> None:
    """As a user types it: the app exits non-zero with the reason, before any work."""
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "harness", *overrides, "progress=false"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert message in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]


def test_model_args_reach_each_cell_of_a_model_ladder() -> None:
    """sllm_loading: ``model_args.<model>`` changes that model's cell config, not the others'."""
    from experiments.loading.suite import cell_config

    cfg = compose_config(["experiment=sllm_loading", "models=[tiny-opt,tiny-llama]",
                          "model_args.tiny-opt.hf_config.num_hidden_layers=1"])
    check_args(cfg, {"model": ["tiny-opt", "tiny-llama"], "loader": list(cfg.loaders)})
    assert cell_config(cfg, "tiny-opt", "fp16").model.hf_config.num_hidden_layers == 1
    assert cell_config(cfg, "tiny-llama", "fp16").model.hf_config.num_hidden_layers == \
        option("model", "tiny-llama").hf_config.num_hidden_layers
    assert option("model", "tiny-opt").hf_config.num_hidden_layers != 1
