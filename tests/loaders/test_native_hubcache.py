"""The native loader on the Hugging Face cache layout: a snapshot's links into its own repository's blobs are
followed; a link to another repository's blob, to /etc, and a FIFO are refused before any byte is read; DRAM-tier
entries of two snapshots that share blobs each serve their own snapshot's bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loaders.native import format as fmt
from loaders.native.loader import NativeLoader
from tests.conftest import RealModels
from tests.real_fixtures import hub_cache

CPU = torch.device("cpu")


def _equal(loaded: dict[str, torch.Tensor], files: list[Path]) -> bool:
    want: dict[str, torch.Tensor] = {}
    for f in files:
        want.update(load_file(f))
    return loaded.keys() == want.keys() and all(torch.equal(loaded[k], want[k]) for k in want)


def test_a_snapshot_loads_in_place(real_models: RealModels) -> None:
    snap = real_models.hub_snapshot
    assert all(p.is_symlink() for p in snap.glob("*.safetensors"))
    result = NativeLoader(format="safetensors").load(snap, CPU)
    assert _equal(result.state_dict, sorted(snap.glob("*.safetensors")))


def _one_file_repo(tmp_path: Path, real_models: RealModels, hf_id: str) -> Path:
    return hub_cache(tmp_path / "hub", hf_id, real_models.opt_fp32_single)


def test_a_link_to_another_repositorys_blob_is_refused(tmp_path: Path, real_models: RealModels) -> None:
    snap = _one_file_repo(tmp_path, real_models, "org/mine")
    other = hub_cache(tmp_path / "hub", "evil/other", real_models.llama_bf16)
    blob = Path(os.readlink(other / "model.safetensors")).name
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(f"../../../models--evil--other/blobs/{blob}")
    with pytest.raises(fmt.OutsideCheckpointError, match="outside the checkpoint directory"):
        NativeLoader(format="safetensors").load(snap, CPU)


def test_a_link_to_etc_is_refused(tmp_path: Path, real_models: RealModels) -> None:
    snap = _one_file_repo(tmp_path, real_models, "org/etc")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to("/etc/hostname")
    with pytest.raises(fmt.OutsideCheckpointError):
        NativeLoader(format="safetensors").load(snap, CPU)
    (snap / "model.safetensors").unlink()  # a blobs/ link that climbs out again is no blob of this repository
    (snap / "model.safetensors").symlink_to("../../blobs/../../../../../../../../etc/hostname")
    with pytest.raises(fmt.OutsideCheckpointError):
        NativeLoader(format="safetensors").load(snap, CPU)


def test_a_fifo_blob_is_refused_without_blocking(tmp_path: Path, real_models: RealModels) -> None:
    snap = _one_file_repo(tmp_path, real_models, "org/fifo")
    blob = Path(os.path.realpath(snap / "model.safetensors"))
    blob.unlink()
    os.mkfifo(blob)  # the link still points at it: a blob that is a FIFO
    with pytest.raises(fmt.NotRegularFileError, match="FIFO"):
        NativeLoader(format="safetensors").load(snap, CPU)


def test_snapshots_sharing_blobs_each_get_their_own_dram_entry(tmp_path: Path, real_models: RealModels) -> None:
    base = real_models.opt_fp32_single
    tensors = load_file(base / "model.safetensors")
    v2 = tmp_path / "v2"
    v2.mkdir()
    for f in base.iterdir():
        (v2 / f.name).write_bytes(f.read_bytes())
    changed = {k: (v + 1 if k.endswith("fc1.weight") else v) for k, v in tensors.items()}
    save_file(changed, v2 / "model.safetensors", metadata={"format": "pt"})
    hub = tmp_path / "hub"
    a = hub_cache(hub, "org/two", base, commit="a" * 40)
    b = hub_cache(hub, "org/two", v2, commit="b" * 40)
    assert os.readlink(a / "config.json") == os.readlink(b / "config.json")  # a shared blob
    assert os.readlink(a / "model.safetensors") != os.readlink(b / "model.safetensors")
    loader = NativeLoader(format="safetensors", dram_dir=str(tmp_path / "dram"))
    for snap in (a, b):
        loader.stage_in_dram(snap)
    for snap, want in ((a, tensors), (b, changed)):
        hot = loader.load(snap, CPU)
        assert hot.bytes_by_tier.get("dram"), hot.bytes_by_tier
        assert all(torch.equal(hot.state_dict[k], want[k]) for k in want)
    # the cache moves b's file to another blob (a re-download): the staged entry is stale and is not served
    blob = hashlib.sha256(b"x").hexdigest()
    data = (b / "model.safetensors").read_bytes()
    (hub / "models--org--two" / "blobs" / blob).write_bytes(data[:-4] + bytes(4))  # last bytes differ
    (b / "model.safetensors").unlink()
    (b / "model.safetensors").symlink_to(f"../../blobs/{blob}")
    again = loader.load(b, CPU)
    assert _equal(again.state_dict, [b / "model.safetensors"])
