"""fastsafetensors loader: equivalence per dtype on the CPU (nogds) path, owned tensors, the GDS switch."""

from __future__ import annotations

import pytest
import torch

from harness.checkpoints import CheckpointStore
from harness.config import instantiate_option
from harness.zoo import DTYPES
from loaders.base import LoaderUnavailableError
from loaders.fastsafetensors import FastsafetensorsLoader, GdsUnavailableError
from tests.conftest import model_spec
from tests.loaders.peer_checks import (
    CPU,
    FastsafetensorsMissingLoader,
    assert_loads_manifest,
    assert_same_first_token,
    assert_tensors_outlive_the_load,
)

pytest.importorskip("fastsafetensors", reason="needs the peers extra: pip install 'coldstart[peers]'")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_loads_the_manifest(shared_store: CheckpointStore, dtype: str) -> None:
    loader = instantiate_option("loader", "fastsafetensors")
    assert isinstance(loader, FastsafetensorsLoader)
    loader.check_available()
    assert_loads_manifest(loader, shared_store, dtype)


def test_small_copy_blocks(shared_store: CheckpointStore) -> None:
    assert_loads_manifest(FastsafetensorsLoader(gds=False, max_copy_block_bytes=4096), shared_store, "bf16")


def test_tensors_outlive_the_handle(shared_store: CheckpointStore) -> None:
    assert_tensors_outlive_the_load(FastsafetensorsLoader(), shared_store)


def test_same_first_token_as_safetensors(shared_store: CheckpointStore) -> None:
    assert_same_first_token(FastsafetensorsLoader(), shared_store)


def test_gds_required_on_cpu_is_a_named_error(shared_store: CheckpointStore) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    with pytest.raises(GdsUnavailableError, match="CUDA"):
        FastsafetensorsLoader(gds=True).load(ckpt.path, CPU)


@pytest.mark.parametrize(("key", "value"), [("gds", "yes"), ("gds", 1), ("max_copy_block_bytes", 0)])
def test_bad_settings_are_named(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        FastsafetensorsLoader(**{key: value})  # type: ignore[arg-type]



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_loads_the_manifest_onto_the_gpu(shared_store: CheckpointStore, dtype: str) -> None:
    assert_loads_manifest(FastsafetensorsLoader(), shared_store, dtype, device=torch.device("cuda"))


def test_missing_package_names_the_extra() -> None:
    with pytest.raises(LoaderUnavailableError, match=r"coldstart\[peers\]"):
        FastsafetensorsMissingLoader().check_available()
