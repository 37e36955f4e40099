"""Baseline loaders: every loader × format × dtype loads exactly the manifest's tensors; bad input is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.config import instantiate_option
from harness.modelbuild import build_model, first_token, materialize
from harness.zoo import DTYPES
from loaders.base import Loader, LoaderUnavailableError, UnsupportedCheckpointError
from tests.conftest import model_spec
from tests.harness.fakes import MissingPackageLoader

BASELINES = ["torch", "torch_mmap", "safetensors", "hf"]
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_loader_equivalence(shared_store: CheckpointStore, name: str, dtype: str) -> None:
    loader = instantiate_option("loader", name)
    assert isinstance(loader, Loader)
    spec = model_spec("tiny-llama")
    for fmt in loader.formats:
        ckpt = shared_store.ensure(spec, dtype, fmt, progress=False)
        if name == "hf" and dtype == "int8":
            with pytest.raises(UnsupportedCheckpointError, match="int8"):
                loader.load(ckpt.path, CPU)
            continue
        result = loader.load(ckpt.path, CPU)
        assert materialize(result.state_dict, CPU) >= ckpt.total_bytes
        assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
        assert all(t.device == CPU for t in result.state_dict.values())


def test_every_loader_builds_the_same_model(shared_store: CheckpointStore) -> None:
    spec = model_spec("tiny-opt")
    tokens = set()
    for name in BASELINES:
        loader = instantiate_option("loader", name)
        ckpt = shared_store.ensure(spec, "fp32", loader.formats[0], progress=False)
        model = build_model(spec, "fp32", loader.load(ckpt.path, CPU).state_dict, CPU)
        tokens.add(first_token(model, CPU))
    assert len(tokens) == 1


def test_wrong_directory_is_a_named_error(tmp_path: Path) -> None:
    loader = instantiate_option("loader", "safetensors")
    with pytest.raises(UnsupportedCheckpointError, match="safetensors"):
        loader.load(tmp_path, CPU)


def test_missing_package_names_the_extra() -> None:
    with pytest.raises(LoaderUnavailableError, match=r"coldstart\[peers\]"):
        MissingPackageLoader().check_available()


def test_unknown_loader_lists_options() -> None:
    with pytest.raises(ValueError, match="safetensors"):
        instantiate_option("loader", "no-such-loader")
