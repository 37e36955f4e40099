"""tensorizer loader: equivalence per dtype from the zoo's tensorizer checkpoints, owned tensors, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.checkpoints import CheckpointStore
from harness.config import instantiate_option
from harness.zoo import DTYPES
from loaders.base import LoaderUnavailableError, UnsupportedCheckpointError
from loaders.tensorizer import TensorizerLoader
from tests.loaders.peer_checks import (
    CPU,
    TensorizerMissingLoader,
    assert_loads_manifest,
    assert_same_first_token,
    assert_tensors_outlive_the_load,
)

pytest.importorskip("tensorizer", reason="needs the peers extra: pip install 'coldstart[peers]'")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_loads_the_manifest(shared_store: CheckpointStore, dtype: str) -> None:
    loader = instantiate_option("loader", "tensorizer")
    assert isinstance(loader, TensorizerLoader)
    loader.check_available()
    assert_loads_manifest(loader, shared_store, dtype)


def test_one_reader_with_its_hash_check(shared_store: CheckpointStore) -> None:
    assert_loads_manifest(TensorizerLoader(num_readers=1, verify_hash=True), shared_store, "int8")


def test_tensors_outlive_the_deserializer(shared_store: CheckpointStore) -> None:
    assert_tensors_outlive_the_load(TensorizerLoader(), shared_store)


def test_same_first_token_as_safetensors(shared_store: CheckpointStore) -> None:
    assert_same_first_token(TensorizerLoader(), shared_store)


def test_wrong_directory_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedCheckpointError, match=r"model\.tensors"):
        TensorizerLoader().load(tmp_path, CPU)


@pytest.mark.parametrize(("key", "value"), [("num_readers", 0), ("num_readers", "4"), ("verify_hash", "yes")])
def test_bad_settings_are_named(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        TensorizerLoader(**{key: value})  # type: ignore[arg-type]



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_loads_the_manifest_onto_the_gpu(shared_store: CheckpointStore, dtype: str) -> None:
    assert_loads_manifest(TensorizerLoader(), shared_store, dtype, device=torch.device("cuda"))


def test_missing_package_names_the_extra() -> None:
    with pytest.raises(LoaderUnavailableError, match=r"coldstart\[peers\]"):
        TensorizerMissingLoader().check_available()
