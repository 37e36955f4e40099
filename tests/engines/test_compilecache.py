"""Compile caches: a warm start restores what a cold one saved (same tokens); a stale, foreign or corrupt artifact is
never loaded but rebuilt, and the start says why."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from engines.compilecache import ARTIFACT, KERNELS, META, PRECOMPILED, CompileCache, compile_key, folder_name
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
    files = {ARTIFACT: checksum or hashlib.sha256(blob).hexdigest()}
    (folder / META).write_text(json.dumps({"key": key, "files": files}))
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
    meta = json.loads((folder / META).read_text())
    # the portable artifacts, the kernels Inductor built and a whole-graph forward per served shape (prefill, decode)
    assert set(meta["files"]) == {ARTIFACT, KERNELS, f"{PRECOMPILED}/forward-1.bin", f"{PRECOMPILED}/forward-8.bin"}
    restored = warm["engine"]["compile_cache_restored_bytes"]
    assert restored == meta["bytes"] == cold["engine"]["compile_cache_saved_bytes"]
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


def _store_files(root: Path, key: dict[str, Any], files: dict[str, bytes]) -> Path:
    """An artifact folder holding ``files`` (by name) with their right checksums."""
    folder = root / folder_name(key)
    for name, blob in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)
    sums = {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}
    (folder / META).write_text(json.dumps({"key": key, "files": sums}))
    return folder


def _kernels_tar(tmp_path: Path) -> bytes:
    import tarfile

    src = tmp_path / "kernels-src"
    src.mkdir()
    (src / "kernel.so").write_bytes(b"built code")
    with tarfile.open(tmp_path / "k.tar", "w") as tar:
        tar.add(src, arcname=".")
    return (tmp_path / "k.tar").read_bytes()


def test_an_artifact_without_a_needed_forward_is_refused(tmp_path: Path) -> None:
    _store_files(tmp_path / "root", _key(), {ARTIFACT: b"x", f"{PRECOMPILED}/forward-8.bin": b"y"})
    cc = CompileCache(tmp_path / "root", "warm", _key())
    try:
        cc.begin(functions=["forward-1", "forward-8"])
    finally:
        cc.end()
    assert cc.status == f"rebuilt: corrupt artifact ({PRECOMPILED}/forward-1.bin is missing)"
    assert cc.functions == {}


def test_a_half_restored_artifact_leaves_nothing_behind(tmp_path: Path) -> None:
    """The kernels unpack before the portable artifacts load: when those are then refused, the cold compile that
    follows starts from an empty Inductor directory, not from the refused artifact's kernels."""
    _store_files(tmp_path / "root", _key(), {KERNELS: _kernels_tar(tmp_path), ARTIFACT: b"\x00garbage"})
    cc = CompileCache(tmp_path / "root", "warm", _key())
    cc.begin()
    try:
        assert cc.status.startswith("rebuilt: corrupt artifact (torch could not load it"), cc.status
        assert not any(Path(cc._scratch or "").iterdir())
    finally:
        cc.end()


def test_an_unreadable_kernels_archive_or_forward_is_refused(tmp_path: Path) -> None:
    _store_files(tmp_path / "a", _key(), {KERNELS: b"not a tar archive", ARTIFACT: b""})
    assert _restore(tmp_path / "a", _key()).status == f"rebuilt: corrupt artifact ({KERNELS}: ReadError)"
    _store_files(tmp_path / "b", _key(), {ARTIFACT: b"", f"{PRECOMPILED}/forward-1.bin": b"\x00not a function"})
    status = _restore(tmp_path / "b", _key()).status
    assert status.startswith(f"rebuilt: corrupt artifact (torch could not load {PRECOMPILED}/forward-1.bin"), status


def _run_engine(model: torch.nn.Module, spec: dict[str, Any], **knobs: Any) -> tuple[list[int], Any]:
    from engines.compiled import CompiledEngine
    from tests.engines.helpers import DECODE, prompt

    ids = prompt(model)
    run = CompiledEngine(max_seq=32, **knobs).prepare(model, CPU, len(ids), DECODE, spec)
    run.alloc_kv()
    run.compile()
    run.first_token(ids)
    run.decode(DECODE)
    run.persist()
    return list(run.tokens), run


@pytest.mark.slow(seconds=90)
def test_a_warm_start_traces_nothing(shared_store: CheckpointStore, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold: each served shape precompiled as one graph and stored; warm: those forwards restored and run, Dynamo
    never called (its whole-graph capture and its frame conversion are made to fail), the same tokens."""
    from torch._dynamo import convert_frame

    from tests.engines.helpers import built

    model = built(shared_store, "tiny-opt")
    spec = {"state": "cold", "root": str(tmp_path), "dtype": "fp16", "architecture": ARCH}
    cold_tokens, cold = _run_engine(model, spec)
    assert cold.cc.status == "cold"
    assert sorted(cold.precompiled) == [1, 8]
    assert cold.saved_bytes > 0

    def no_tracing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Dynamo traced on a warm start")

    monkeypatch.setattr(convert_frame, "fullgraph_capture", no_tracing)
    monkeypatch.setattr(convert_frame.ConvertFrameAssert, "__call__", no_tracing)
    monkeypatch.setattr(convert_frame.ConvertFrame, "__call__", no_tracing)
    warm_tokens, warm = _run_engine(built(shared_store, "tiny-opt"), {**spec, "state": "warm"})
    assert warm.cc.status == "hit"
    assert sorted(warm.precompiled) == [1, 8]
    assert warm.saved_bytes == 0  # a hit keeps the stored artifact
    assert warm_tokens == cold_tokens


def test_a_backend_whose_output_cannot_be_stored_is_named(shared_store: CheckpointStore, tmp_path: Path) -> None:
    from torch._dynamo.backends.registry import register_backend

    from engines.compiled import PrecompileError
    from tests.engines.helpers import built

    @register_backend(name="coldstart_test_unstorable")
    def unstorable(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        return lambda *args: gm(*args)  # a plain function: nothing torch can serialize

    spec = {"state": "cold", "root": str(tmp_path), "dtype": "fp16", "architecture": ARCH}
    with pytest.raises(PrecompileError, match=r"backend 'coldstart_test_unstorable' compiles nothing that can be "
                                              r"stored.*precompile=false"):
        _run_engine(built(shared_store, "tiny-opt"), spec, backend="coldstart_test_unstorable")
    model = built(shared_store, "tiny-opt")
    tokens, run = _run_engine(model, spec, backend="coldstart_test_unstorable", precompile=False)
    assert run.precompiled == {}
    from tests.engines.helpers import greedy_reference

    assert tokens == greedy_reference(model)  # Dynamo's graphs run as they are: exact


def test_precompiled_forwards_survive_another_models_compile(shared_store: CheckpointStore, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool worker prepares one engine per architecture: preparing the second (which resets Dynamo) must leave
    the first's precompiled forwards serving, without tracing again."""
    from torch._dynamo import convert_frame

    from tests.engines.helpers import built, greedy_reference

    spec = {"state": "cold", "root": str(tmp_path), "dtype": "fp16", "save": False}
    opt = built(shared_store, "tiny-opt")
    opt_tokens, opt_run = _run_engine(opt, {**spec, "architecture": ARCH}, backend="aot_eager")
    _run_engine(built(shared_store, "tiny-llama"), {**spec, "architecture": {"name": "tiny-llama"}},
                backend="aot_eager")

    def no_tracing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Dynamo traced a prepared engine again")

    monkeypatch.setattr(convert_frame.ConvertFrameAssert, "__call__", no_tracing)
    monkeypatch.setattr(convert_frame.ConvertFrame, "__call__", no_tracing)
    opt_run.swap_weights(dict(opt.state_dict()))
    from tests.engines.helpers import DECODE, prompt

    opt_run.first_token(prompt(opt))
    opt_run.decode(DECODE)
    assert opt_run.tokens == opt_tokens == greedy_reference(opt)
