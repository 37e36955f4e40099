"""Shared fixtures: a per-test checkpoint store, composed configs, and the gpu marker's skip."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from harness.checkpoints import CheckpointStore
from harness.config import compose_config, instantiate_option
from harness.zoo import ModelSpec


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible): run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def model_spec(name: str) -> ModelSpec:
    spec = instantiate_option("model", name)
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


def compose(*overrides: str | list[str]) -> DictConfig:
    """The app's config as ``coldstart OVERRIDES...`` composes it: ``compose("experiment=x", ["smoke=true"])``."""
    flat = [o for ov in overrides for o in ([ov] if isinstance(ov, str) else ov)]
    return compose_config(flat)


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg(overrides)`` or ``compose_cfg(*overrides)`` → the app's config as Hydra composes it."""
    return compose


@pytest.fixture
def extra_options() -> Iterator[Callable[[str, str, dict[str, Any]], None]]:
    """``extra_options(group, name, node)``: a test-only option, composed by Hydra like any file under ``conf/``
    (stored in Hydra's ConfigStore), removed when the test ends."""
    added: list[tuple[str, str]] = []

    def _add(group: str, name: str, node: dict[str, Any]) -> None:
        ConfigStore.instance().store(group=group, name=name, node=node)
        added.append((group, name))

    yield _add
    repo = ConfigStore.instance().repo
    for group, name in added:
        repo[group].pop(f"{name}.yaml", None)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """One local Ray instance (loopback, 2 CPUs) for the whole test session, shut down at its end.

    ray is installed by ``make test`` (extra ``ray``); its absence fails the test that asks for it, loudly.
    """
    from harness.raycluster import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray
