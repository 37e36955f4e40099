"""Checks every peer loader must pass, and fakes of peers whose package is missing (importable by ``_target_``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.modelbuild import build_model, first_token, materialize
from loaders.base import Loader
from loaders.fastsafetensors import FastsafetensorsLoader
from loaders.runai import RunaiLoader
from loaders.safetensors import SafetensorsLoader
from loaders.tensorizer import TensorizerLoader
from tests.conftest import model_spec

CPU = torch.device("cpu")


def assert_loads_manifest(loader: Loader, store: CheckpointStore, dtype: str, model: str = "tiny-llama",
                          device: torch.device = CPU) -> None:
    """The loader delivers exactly the manifest's tensors (names, dtypes, shapes, xxh3) on the device, materialized."""
    ckpt = store.ensure(model_spec(model), dtype, loader.formats[0], progress=False)
    result = loader.load(ckpt.path, device)
    assert materialize(result.state_dict, device) >= ckpt.total_bytes
    assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
    assert all(t.device.type == device.type for t in result.state_dict.values())
    assert all(not t.requires_grad for t in result.state_dict.values())
    assert result.phases_s["read_s"] > 0


def assert_tensors_outlive_the_load(loader: Loader, store: CheckpointStore) -> None:
    """Tensors stay valid after the peer closes and after later loads (which would reuse any recycled buffer)."""
    spec = model_spec("tiny-opt")
    first = store.ensure(spec, "fp16", loader.formats[0], progress=False)
    kept = loader.load(first.path, CPU).state_dict
    for dtype in ("bf16", "fp32", "int8"):  # different bytes through the same machinery
        later = store.ensure(spec, dtype, loader.formats[0], progress=False)
        loader.load(later.path, CPU)
    assert verify_state_dict(first, kept) == first.total_bytes


def assert_same_first_token(loader: Loader, store: CheckpointStore) -> None:
    """The model built from the peer's tensors predicts what the safetensors baseline's model predicts."""
    spec = model_spec("tiny-opt")
    tokens = []
    for each in (SafetensorsLoader(), loader):
        ckpt = store.ensure(spec, "fp32", each.formats[0], progress=False)
        model = build_model(spec, "fp32", each.load(ckpt.path, CPU).state_dict, CPU)
        tokens.append(first_token(model, CPU))
    assert tokens[0] == tokens[1]


class RunaiMissingLoader(RunaiLoader):
    """The Run:ai loader on a machine without its package."""

    requires: ClassVar[tuple[str, ...]] = ("runai_model_streamer_not_installed",)


class FastsafetensorsMissingLoader(FastsafetensorsLoader):
    """The fastsafetensors loader on a machine without its package."""

    requires: ClassVar[tuple[str, ...]] = ("fastsafetensors_not_installed",)


class TensorizerMissingLoader(TensorizerLoader):
    """The tensorizer loader on a machine without its package."""

    requires: ClassVar[tuple[str, ...]] = ("tensorizer_not_installed",)
