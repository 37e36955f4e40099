"""What the store derives from a real model: the manifest, computed once per fingerprint; conversions into the
store, atomically, recomputed when a shard changes; and the user's files never written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import realstore
from harness.checkpoints import MANIFEST, CheckpointStore, ChecksumMismatchError
from harness.realmodel import RealModel
from harness.trial import run_trial
from tests.conftest import RealModels
from tests.real_fixtures import copy_tree, tree_state

FORMATS = ("safetensors", "torch_bin", "torch_pt", "native", "tensorizer")


def test_the_users_files_are_never_written(real_models: RealModels, tmp_path: Path) -> None:
    roots = [real_models.opt_bf16_sharded, real_models.opt_bin_sharded, real_models.hub]
    before = {r: tree_state(r) for r in roots}
    store = CheckpointStore(tmp_path / "store")
    from loaders.native.loader import NativeLoader

    for spec in (RealModel(path=str(real_models.opt_bf16_sharded)), RealModel(path=str(real_models.opt_bin_sharded)),
                 RealModel(hf_id="org/tiny-opt", cache_dir=str(real_models.hub))):
        for fmt in FORMATS:
            for dtype in ("auto", "fp16"):
                ckpt = store.ensure(spec, dtype, fmt, progress=False)
                if ckpt.path != spec.source.path:
                    assert ckpt.path.is_relative_to(store.root)
        loader = NativeLoader(format="safetensors", verify="always", dram_dir=str(tmp_path / "dram"))
        if spec.source.format == "safetensors":  # read in place, staged in a DRAM tier, loaded hot
            loader.load(spec.source.path, torch.device("cpu"))
            loader.stage_in_dram(spec.source.path)
            loader.load(spec.source.path, torch.device("cpu"))
            loader.unstage_from_dram(spec.source.path)
    assert {r: tree_state(r) for r in roots} == before
    leftovers = [p for p in store.root.rglob(".*tmp*")]
    assert not leftovers


def test_the_manifest_is_computed_once_per_fingerprint(real_models: RealModels, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    d = copy_tree(real_models.opt_bf16_sharded, tmp_path / "model")
    store = CheckpointStore(tmp_path / "store")
    hashed: list[int] = []
    real = realstore.hash_records

    def counting(*args: Any, **kwargs: Any) -> Any:
        hashed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(realstore, "hash_records", counting)
    first = RealModel(path=str(d)).manifest(store, progress=False)
    assert first.path == d
    assert first.manifest_path.is_relative_to(store.root / "sources")
    again = RealModel(path=str(d)).manifest(store, progress=False)
    assert len(hashed) == 1
    assert again.manifest == first.manifest
    # the manifest's checksums are the loaded tensors' (harness.checkpoints.tensor_digest)
    from harness.checkpoints import verify_state_dict
    from loaders.safetensors import SafetensorsLoader

    assert verify_state_dict(first, SafetensorsLoader().load(d, torch.device("cpu")).state_dict) > 0


def test_a_changed_shard_invalidates_the_manifest_and_the_conversions(real_models: RealModels,
                                                                      tmp_path: Path) -> None:
    d = copy_tree(real_models.opt_bf16_sharded, tmp_path / "model")
    store = CheckpointStore(tmp_path / "store")
    spec = RealModel(path=str(d))
    old_manifest = spec.manifest(store, progress=False)
    old_native = store.ensure(spec, "auto", "native", progress=False)
    old_bin = store.ensure(spec, "auto", "torch_bin", progress=False)
    shard = sorted(d.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one byte of the shard's last tensor
    shard.write_bytes(bytes(data))
    new = RealModel(path=str(d))
    assert new.fingerprint != spec.fingerprint
    new_manifest = new.manifest(store, progress=False)
    assert new_manifest.manifest_path != old_manifest.manifest_path
    assert new_manifest.tensors != old_manifest.tensors
    assert not old_manifest.manifest_path.exists()  # the stale ones are gone
    new_native = store.ensure(new, "auto", "native", progress=False)
    assert new_native.path != old_native.path
    assert not old_native.path.exists()
    assert store.ensure(new, "auto", "torch_bin", progress=False).path != old_bin.path
    assert not old_bin.path.exists()
    mine = {n: t["xxh3_64"] for n, t in new_native.tensors.items()}
    assert mine == {n: t["xxh3_64"] for n, t in new_manifest.tensors.items()}


def test_a_file_changed_after_the_manifest_fails_the_trials_verification(real_models: RealModels,
                                                                         tmp_path: Path) -> None:
    d = copy_tree(real_models.opt_fp32_single, tmp_path / "model")
    spec = RealModel(path=str(d))
    ckpt = CheckpointStore(tmp_path / "store").ensure(spec, "auto", "safetensors", progress=False)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-3] ^= 0x01
    (d / "model.safetensors").write_bytes(bytes(data))
    trial = {"loader": {"_target_": "loaders.safetensors.SafetensorsLoader"}, "model": spec.trial_config(),
             "checkpoint": str(d), "dtype": "auto", "device": "cpu", "prompt_tokens": 4, "verify": True,
             "manifest": str(ckpt.manifest_path)}
    with pytest.raises(ChecksumMismatchError, match="checksum"):
        run_trial(trial, 0.0)


def test_conversions_record_their_source(real_models: RealModels, tmp_path: Path) -> None:
    spec = RealModel(path=str(real_models.opt_bin_sharded))
    ckpt = CheckpointStore(tmp_path / "store").ensure(spec, "auto", "safetensors", progress=False)
    doc = json.loads((ckpt.path / MANIFEST).read_text())
    assert doc["generator"] == "source"
    assert doc["source"]["fingerprint"] == spec.fingerprint
    assert doc["source"]["model_path"] == str(real_models.opt_bin_sharded)
    assert doc["source"]["cast"] == ""
    assert doc["dtype"] == "fp32"
    assert json.loads((ckpt.path / "config.json").read_text())["model_type"] == "opt"
    assert not any(p.name.startswith(".") for p in ckpt.path.iterdir())
    assert os.access(ckpt.path, os.R_OK)


def test_the_stores_path_for_a_real_model_is_never_its_directory(real_models: RealModels, tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    spec = RealModel(path=str(real_models.opt_bf16_sharded))
    for fmt in FORMATS:  # what delete_checkpoints=true may remove: conversions in the store only
        path = store.path_for(spec, "auto", fmt, 0)
        assert path.is_relative_to(store.root)
        assert path != spec.source.path
