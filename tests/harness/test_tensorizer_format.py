"""The zoo's tensorizer writer (harness/checkpoints.py): the same tensors as the other formats, read back by
tensorizer itself; writes are atomic."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
import torch

import harness.checkpoints as ck
from harness.checkpoints import CheckpointStore, CheckpointWriteError, verify_state_dict
from harness.synthetic import iter_chunks
from harness.zoo import DTYPES, TensorSpec
from loaders.tensorizer import TENSORS_FILE
from tests.conftest import model_spec

pytest.importorskip("tensorizer", reason="needs the peers extra: pip install 'coldstart[peers]'")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_round_trip_and_same_manifest_as_safetensors(store: CheckpointStore, dtype: str) -> None:
    from tensorizer import TensorDeserializer

    spec = model_spec("tiny-llama")
    ckpt = store.ensure(spec, dtype, "tensorizer", seed=3, progress=False)
    reference = store.ensure(spec, dtype, "safetensors", seed=3, progress=False)
    assert [p.name for p in ckpt.files] == [TENSORS_FILE]
    assert (ckpt.path / "config.json").exists()
    strip = {"file"}
    assert {k: {f: v for f, v in m.items() if f not in strip} for k, m in ckpt.tensors.items()} == \
        {k: {f: v for f, v in m.items() if f not in strip} for k, m in reference.tensors.items()}
    with TensorDeserializer(str(ckpt.files[0]), device="cpu") as tensors:  # tensorizer's own reader
        state_dict = {str(k): t.detach() for k, t in tensors.items()}
    assert verify_state_dict(ckpt, state_dict) == spec.checkpoint_bytes(dtype) == ckpt.total_bytes
    assert list(state_dict) == [ts.name for ts in spec.tensor_specs(dtype)]


def test_cached_checkpoint_is_reused(store: CheckpointStore) -> None:
    spec = model_spec("tiny-opt")
    first = store.ensure(spec, "fp16", "tensorizer", progress=False)
    mtime = first.files[0].stat().st_mtime_ns
    assert store.ensure(spec, "fp16", "tensorizer", progress=False).files[0].stat().st_mtime_ns == mtime


def test_full_disk_leaves_nothing_behind(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    written = []

    def failing_chunks(ts: TensorSpec, seed: int) -> Iterator[torch.Tensor]:
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(ts.name)
        return iter_chunks(ts, seed)

    monkeypatch.setattr(ck, "iter_chunks", failing_chunks)
    with pytest.raises(CheckpointWriteError, match="no space"):
        store.ensure(model_spec("tiny-opt"), "fp16", "tensorizer", progress=False)
    assert not store.root.exists() or list(store.root.iterdir()) == []


def test_missing_package_names_the_extra(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ck.importlib.util.find_spec
    monkeypatch.setattr(ck.importlib.util, "find_spec", lambda name, *a: None if name == "tensorizer" else real(name))
    with pytest.raises(CheckpointWriteError, match=r"coldstart\[peers\]"):
        store.ensure(model_spec("tiny-opt"), "fp16", "tensorizer", progress=False)
    assert list(store.root.iterdir()) == []
