"""Compile caches: a warm start restores what a cold one saved (same tokens); a stale, foreign or corrupt artifact is
never loaded but rebuilt, and the start says why."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from engines.compilecache import ARTIFACT, META, CompileCache, compile_key, folder_name
from harness.checkpoints import CheckpointStore
from harness.config import option_dict
from harness.executors.local import LocalExecutor
from tests.runtimes.helpers import trial_spec

CPU = torch.device("cpu")
ARCH = {"name": "tiny-opt", "arch": "transformers.OPTConfig", "hf_config": {"hidden_size": 64}}


def _key(**changes: Any) -> dict[str, Any]:
    key = compile_key(ARCH, "fp16", "compiled", {"mode": "default"}, {"prompt_len": 8}, CPU)
    return {**key, **changes}


def _store(root: Path, key: dict[str, Any], blob: bytes, checksum: str | None = None) -> Path:
    folder = root / folder_name(key)
    folder.mkdir(parents=True)
    (folder / ARTIFACT).write_bytes(blob)
    (folder / META).write_text(json.dumps({"key": key, "sha256": checksum or hashlib.sha256(blob).hexdigest()}))
    return folder


def _restore(root: Path, key: dict[str, Any]) -> CompileCache:
    cc = CompileCache(root, "warm", key)
    try:
        cc.begin()
    finally:
        cc.end()
    return cc


@pytest.mark.parametrize(("stored", "needle"), [
    ({"torch": "2.0.0"}, "foreign artifact (torch: saved for '2.0.0'"),
    ({"device": "cuda:NVIDIA H100"}, "foreign artifact (device"),
    ({"architecture": {**ARCH, "hf_config": {"hidden_size": 128}}}, "foreign artifact (architecture"),
])
def test_a_foreign_artifact_is_refused_and_named(tmp_path: Path, stored: dict[str, Any], needle: str) -> None:
    _store(tmp_path, _key(**stored), b"whatever")
    # an artifact of another torch or device sits in the same folder; another architecture is copied into it
    folder = tmp_path / folder_name(_key())
    if not folder.exists():
        (tmp_path / folder_name(_key(**stored))).rename(folder)
    cc = _restore(tmp_path, _key())
    assert cc.status.startswith("rebuilt: "), cc.status
    assert needle in cc.status, cc.status
    assert cc.restored_bytes == 0


def test_a_corrupt_artifact_is_refused(tmp_path: Path) -> None:
    _store(tmp_path, _key(), b"good bytes", checksum=hashlib.sha256(b"other bytes").hexdigest())
    assert "corrupt artifact (artifacts.bin does not match its checksum)" in _restore(tmp_path, _key()).status
    (tmp_path / folder_name(_key()) / META).write_text("{not json")
    assert "unreadable meta.json" in _restore(tmp_path, _key()).status


def test_bytes_torch_cannot_load_are_refused(tmp_path: Path) -> None:
    _store(tmp_path, _key(), b"\x00not an artifact torch wrote")  # checksum right, content garbage
    assert "corrupt artifact (torch could not load it" in _restore(tmp_path, _key()).status


def test_no_artifact_yet_is_a_rebuild_and_the_environment_comes_back(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    cc = CompileCache(tmp_path, "warm", _key())
    cc.begin()
    scratch = Path(cc._scratch or "")
    assert scratch.is_dir()
    assert not any(scratch.iterdir())
    cc.end()
    assert cc.status == "rebuilt: no artifact saved yet"
    assert not scratch.exists()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"


def _compiled_trial(store: CheckpointStore, root: Path, state: str) -> dict[str, Any]:
    spec = trial_spec(store, "tiny-opt")
    spec.update({"engine": {**option_dict("engine", "compiled"), "max_seq": 32}, "decode_tokens": 4,
                 "compile_cache": {"state": state, "root": str(root), "dtype": "fp16", "architecture": ARCH}})
    out: dict[str, Any] = LocalExecutor().run_trial(spec, 600)
    return out


@pytest.mark.slow(seconds=120)
def test_warm_restores_what_cold_saved_and_a_corrupted_one_is_rebuilt(shared_store: CheckpointStore,
                                                                      tmp_path: Path) -> None:
    root = tmp_path / "compile"
    cold = _compiled_trial(shared_store, root, "cold")
    assert cold["engine"]["compile_cache_status"] == "cold"
    assert cold["engine"]["compile_cache_saved_bytes"] > 0
    (folder,) = root.iterdir()
    warm = _compiled_trial(shared_store, root, "warm")
    assert warm["engine"]["compile_cache_status"] == "hit"
    assert warm["engine"]["compile_cache_restored_bytes"] == (folder / ARTIFACT).stat().st_size
    assert warm["first_token_id"] == cold["first_token_id"]
    assert len(warm["decode_s"]) == 4
    blob = bytearray((folder / ARTIFACT).read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte
    (folder / ARTIFACT).write_bytes(bytes(blob))
    rebuilt = _compiled_trial(shared_store, root, "warm")
    assert rebuilt["engine"]["compile_cache_status"] == \
        "rebuilt: corrupt artifact (artifacts.bin does not match its checksum)"
    assert rebuilt["first_token_id"] == cold["first_token_id"]
    assert rebuilt["engine"]["compile_cache_saved_bytes"] > 0  # replaced: the next warm start is a hit again
    assert _compiled_trial(shared_store, root, "warm")["engine"]["compile_cache_status"] == "hit"
