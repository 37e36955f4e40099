"""Run:ai Model Streamer loader: equivalence per dtype, owned tensors, the environment knobs scoped to the load."""

from __future__ import annotations

import os

import pytest
import torch

from harness.checkpoints import CheckpointStore
from harness.config import instantiate_option
from harness.zoo import DTYPES
from loaders.base import LoaderUnavailableError
from loaders.runai import CHUNK_BYTES_ENV, CONCURRENCY_ENV, MEMORY_LIMIT_ENV, RunaiLoader, scoped_environ
from tests.conftest import model_spec
from tests.loaders.peer_checks import (
    CPU,
    RunaiMissingLoader,
    assert_loads_manifest,
    assert_same_first_token,
    assert_tensors_outlive_the_load,
)

pytest.importorskip("runai_model_streamer", reason="needs the peers extra: pip install 'coldstart[peers]'")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_loads_the_manifest(shared_store: CheckpointStore, dtype: str) -> None:
    loader = instantiate_option("loader", "runai")
    assert isinstance(loader, RunaiLoader)
    loader.check_available()
    assert_loads_manifest(loader, shared_store, dtype)


def test_small_chunks_and_one_thread(shared_store: CheckpointStore) -> None:
    assert_loads_manifest(RunaiLoader(concurrency=1, chunk_bytes=4096), shared_store, "fp32")


def test_tensors_outlive_the_streamer(shared_store: CheckpointStore) -> None:
    assert_tensors_outlive_the_load(RunaiLoader(), shared_store)


def test_tensors_survive_a_ring_smaller_than_the_model(shared_store: CheckpointStore) -> None:
    # a 0 limit sizes the ring to the largest tensor, so the streamer recycles buffers within this one load:
    # only owned tensors come through intact (with owned=False this test fails on the first recycled tensor)
    assert_loads_manifest(RunaiLoader(memory_limit_bytes=0), shared_store, "fp32", model="tiny-opt")


def test_same_first_token_as_safetensors(shared_store: CheckpointStore) -> None:
    assert_same_first_token(RunaiLoader(), shared_store)


def test_environment_is_set_for_the_load_only(shared_store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONCURRENCY_ENV, "7")
    monkeypatch.delenv(CHUNK_BYTES_ENV, raising=False)
    loader = RunaiLoader(concurrency=3, chunk_bytes=4 << 20, memory_limit_bytes=-1)
    assert loader.environment() == {CONCURRENCY_ENV: "3", CHUNK_BYTES_ENV: str(4 << 20), MEMORY_LIMIT_ENV: "-1"}
    with scoped_environ(loader.environment()):
        assert os.environ[CONCURRENCY_ENV] == "3"
        assert os.environ[CHUNK_BYTES_ENV] == str(4 << 20)
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    loader.load(ckpt.path, CPU)
    assert os.environ[CONCURRENCY_ENV] == "7"
    assert CHUNK_BYTES_ENV not in os.environ
    with pytest.raises(RuntimeError, match="boom"), scoped_environ({CHUNK_BYTES_ENV: "1"}):
        raise RuntimeError("boom")
    assert CHUNK_BYTES_ENV not in os.environ  # restored on errors too
    assert RunaiLoader(concurrency=None, chunk_bytes=None).environment() == {}


@pytest.mark.parametrize(("key", "value"), [("concurrency", 0), ("chunk_bytes", -1), ("concurrency", "16"),
                                            ("concurrency", True), ("memory_limit_bytes", -2)])
def test_bad_settings_are_named(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        RunaiLoader(**{key: value})  # type: ignore[arg-type]



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_loads_the_manifest_onto_the_gpu(shared_store: CheckpointStore, dtype: str) -> None:
    assert_loads_manifest(RunaiLoader(), shared_store, dtype, device=torch.device("cuda"))


def test_missing_package_names_the_extra() -> None:
    with pytest.raises(LoaderUnavailableError, match=r"coldstart\[peers\]"):
        RunaiMissingLoader().check_available()
