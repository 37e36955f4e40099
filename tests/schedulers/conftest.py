"""Shared fixtures for the scheduler tests: Hydra composition, small clusters, model facts without the zoo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from harness.paths import repo_root
from schedulers.base import ModelInfo


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    return repo_root() / "conf"


@pytest.fixture(scope="session")
def compose_cfg(conf_dir: Path) -> Callable[..., DictConfig]:
    """``compose_cfg("experiment=sllm_scheduler", "smoke=true")`` → the composed config."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


def fake_model(
    name: str = "m",
    size_gb: float = 10.0,
    gpus: int = 1,
    decode_s: float = 0.02,
    prefill_s: float = 0.0001,
    base_s: float = 0.01,
    build_s: float = 0.0,
) -> ModelInfo:
    """A hand-written model: ``size_gb`` of weights, ``gpus`` per instance, a linear speed profile."""
    return ModelInfo(
        name=name,
        size_bytes=int(size_gb * 1e9),
        gpus=gpus,
        prefill_s_per_token=prefill_s,
        prefill_base_s=base_s,
        decode_s_per_token=decode_s,
        build_s=build_s,
    )
