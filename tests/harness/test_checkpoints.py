"""Checkpoint writer: round trips per format and dtype, determinism, manifests, failures leave nothing behind."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import harness.checkpoints as ck
from harness.checkpoints import (
    CheckpointCorruptError,
    CheckpointMissingError,
    CheckpointStore,
    CheckpointWriteError,
    ChecksumMismatchError,
    open_checkpoint,
    verify_state_dict,
)
from harness.modelbuild import build_model, prompt_ids
from harness.synthetic import synthetic_tensor
from harness.zoo import DTYPES
from tests.conftest import model_spec


def _read(ckpt: ck.Checkpoint) -> dict[str, torch.Tensor]:
    """Independent reference readers (the formats' own libraries)."""
    out: dict[str, torch.Tensor] = {}
    for f in ckpt.files:
        out.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, weights_only=True))
    return out


# the native and tensorizer round trips are in tests/loaders/test_native_format.py and
# tests/harness/test_tensorizer_format.py (their readers are those loaders)
@pytest.mark.parametrize("fmt", [f for f in CheckpointStore.FORMATS if f not in ("native", "tensorizer")])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_round_trip_every_format_and_dtype(store: CheckpointStore, fmt: str, dtype: str) -> None:
    spec = model_spec("tiny-llama")
    ckpt = store.ensure(spec, dtype, fmt, seed=3, progress=False)
    sd = _read(ckpt)
    specs = spec.tensor_specs(dtype)
    assert list(sd) == [t.name for t in specs] or set(sd) == {t.name for t in specs}
    for ts in specs:
        assert sd[ts.name].dtype == ts.dtype
        assert tuple(sd[ts.name].shape) == ts.shape
        assert torch.equal(sd[ts.name], synthetic_tensor(ts, 3)), ts.name
    assert verify_state_dict(ckpt, sd) == spec.checkpoint_bytes(dtype) == ckpt.total_bytes
    if fmt != "torch_pt":
        assert len(ckpt.files) > 1, "the small shard bound should produce several shards"


def test_safetensors_index_and_from_pretrained(store: CheckpointStore) -> None:
    spec = model_spec("tiny-opt")
    ckpt = store.ensure(spec, "fp32", "safetensors", seed=0, progress=False)
    index = json.loads((ckpt.path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ckpt.tensors)
    # transformers loads the directory as-is and computes the same logits as our meta build
    hf = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch.float32).eval()
    ours = build_model(spec, "fp32", _read(ckpt), torch.device("cpu"))
    ids = prompt_ids(spec.config().vocab_size, 8)
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    spec = model_spec("tiny-opt")
    a = CheckpointStore(tmp_path / "a").ensure(spec, "bf16", "safetensors", seed=1, progress=False)
    b = CheckpointStore(tmp_path / "b").ensure(spec, "bf16", "safetensors", seed=1, progress=False)
    c = CheckpointStore(tmp_path / "c").ensure(spec, "bf16", "safetensors", seed=2, progress=False)
    digests = lambda x: {k: v["xxh3_64"] for k, v in x.tensors.items()}  # noqa: E731
    assert digests(a) == digests(b)
    assert all(digests(a)[k] != digests(c)[k] for k in digests(a) if "bias" not in k and "norm" not in k)


def test_cache_reuses_an_intact_checkpoint_and_regenerates_a_truncated_one(store: CheckpointStore) -> None:
    spec = model_spec("tiny-opt")
    first = store.ensure(spec, "fp16", "torch_bin", progress=False)
    mtime = first.files[0].stat().st_mtime_ns
    assert store.ensure(spec, "fp16", "torch_bin", progress=False).files[0].stat().st_mtime_ns == mtime
    with open(first.files[0], "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointCorruptError, match="truncated"):
        open_checkpoint(first.path)
    again = store.ensure(spec, "fp16", "torch_bin", progress=False)
    assert again.files[0].stat().st_size == first.manifest["files"][first.files[0].name]


def test_missing_checkpoint_and_missing_file(store: CheckpointStore, tmp_path: Path) -> None:
    with pytest.raises(CheckpointMissingError):
        open_checkpoint(tmp_path / "nope")
    ckpt = store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    ckpt.files[-1].unlink()
    with pytest.raises(CheckpointMissingError, match="missing"):
        open_checkpoint(ckpt.path)


def test_checksum_mismatch_names_the_tensor(store: CheckpointStore) -> None:
    ckpt = store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    sd = _read(ckpt)
    name = sorted(sd)[3]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] += 1
    with pytest.raises(ChecksumMismatchError, match=name.replace(".", r"\.")):
        verify_state_dict(ckpt, sd)
    sd.pop(name)
    with pytest.raises(ChecksumMismatchError, match="missing"):
        verify_state_dict(ckpt, sd)


class _FullDisk:
    """A file object that accepts ``limit`` bytes, then fails like a full disk."""

    def __init__(self, path: Path, limit: int) -> None:
        self._f = open(path, "wb")  # noqa: SIM115
        self._left = limit

    def write(self, data: bytes | memoryview) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@pytest.mark.parametrize("fmt", ["safetensors", "torch_bin"])
def test_disk_full_leaves_nothing_partial(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    monkeypatch.setattr(ck, "_open_for_write", lambda path: _FullDisk(path, 150_000))
    spec = model_spec("tiny-opt")
    with pytest.raises(CheckpointWriteError, match="no space left"):
        store.ensure(spec, "fp32", fmt, progress=False)
    assert not any(store.root.iterdir()), list(store.root.iterdir())


def test_not_enough_space_is_refused_before_writing(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    class _Usage:
        free = 1000

    monkeypatch.setattr(ck.shutil, "disk_usage", lambda _: _Usage())
    with pytest.raises(CheckpointWriteError, match="not enough disk space"):
        store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    assert not any(p for p in store.root.iterdir() if not p.name.startswith("."))


def test_single_file_torch_format_is_bounded(tmp_path: Path) -> None:
    small = CheckpointStore(tmp_path, torch_pt_max_bytes=10_000)
    with pytest.raises(CheckpointWriteError, match="torch_pt_max_bytes"):
        small.ensure(model_spec("tiny-opt"), "fp16", "torch_pt", progress=False)


def test_unknown_format_lists_allowed(store: CheckpointStore) -> None:
    with pytest.raises(ValueError, match="safetensors"):
        store.ensure(model_spec("tiny-opt"), "fp16", "gguf", progress=False)


@pytest.mark.slow
def test_writer_memory_stays_bounded(tmp_path: Path) -> None:
    """Peak RSS growth while writing opt-125m fp32 (~500 MB) stays well under the checkpoint size."""
    code = f"""
import resource, sys
from tests.conftest import model_spec
from harness.checkpoints import CheckpointStore
spec = model_spec("opt-125m")
spec.tensor_specs("fp32")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
store = CheckpointStore({str(tmp_path)!r}, safetensors_shard_bytes=128 << 20, torch_shard_bytes=64 << 20)
ck = store.ensure(spec, "fp32", sys.argv[1], progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak - base, ck.total_bytes)
"""
    for fmt in ("safetensors", "torch_bin"):
        out = subprocess.run([sys.executable, "-c", code, fmt], capture_output=True, text=True, check=True)
        growth, total = map(int, out.stdout.split())
        assert total > 450e6
        assert growth < 0.5 * total, f"{fmt}: RSS grew {growth / 1e6:.0f} MB writing {total / 1e6:.0f} MB"


def test_every_format_a_loader_reads_is_one_the_store_writes() -> None:
    """FORMAT_WRITERS is the one list: a loader naming a format outside it would never get a checkpoint."""
    from harness.checkpoints import FORMAT_WRITERS
    from harness.config import instantiate_option, options

    for name in options("loader"):
        formats = instantiate_option("loader", name).formats
        assert formats, name
        assert set(formats) <= set(FORMAT_WRITERS), (name, formats)
