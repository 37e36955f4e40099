"""Shared fixtures: a per-test checkpoint store, composed configs, and the gpu marker's skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.checkpoints import CheckpointStore
from harness.paths import repo_root
from harness.zoo import ModelSpec

CONF_DIR = repo_root() / "conf"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible): run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def model_spec(name: str) -> ModelSpec:
    spec = instantiate(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    assert isinstance(spec, ModelSpec)
    return spec


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpts", safetensors_shard_bytes=200_000, torch_shard_bytes=200_000)


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> CheckpointStore:
    """A store reused across tests that only read checkpoints."""
    return CheckpointStore(tmp_path_factory.mktemp("shared-ckpts"), safetensors_shard_bytes=200_000,
                           torch_shard_bytes=200_000)


@pytest.fixture
def compose_cfg() -> Iterator[object]:
    """``compose_cfg(overrides)`` → the app's config as Hydra composes it (hydra.* resolvers available)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):

        def _compose(overrides: list[str]) -> DictConfig:
            return compose(config_name="config", overrides=overrides, return_hydra_config=False)

        yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """One local Ray instance (loopback, 2 CPUs) for the whole test session, shut down at its end.

    ray is installed by ``make test`` (extra ``ray``); its absence fails the test that asks for it, loudly.
    """
    from harness.raycluster import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray
