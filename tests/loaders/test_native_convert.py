"""Converter: every source kind, atomic output, concurrent conversions, SIGKILL and full disk leave nothing visible."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import loaders.native.convert as conv
from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.modelbuild import materialize
from loaders.native.format import INDEX, read_index
from loaders.native.loader import NativeLoader
from tests.conftest import model_spec
from tests.loaders.native_fixtures import small_state_dict

CPU = torch.device("cpu")


@pytest.mark.parametrize("src_format", ["safetensors", "torch_bin", "torch_pt"])
def test_convert_from_zoo_checkpoints(shared_store: CheckpointStore, tmp_path: Path, src_format: str) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-llama"), "bf16", src_format, progress=False)
    dst = tmp_path / "native"
    assert conv.main([str(ckpt.path), str(dst), "--quiet", "--chunk-bytes", "8192"]) == 0
    loaded = NativeLoader(dram_dir=None).load(dst, CPU).state_dict
    materialize(loaded, CPU)
    assert verify_state_dict(ckpt, loaded) == ckpt.total_bytes


def test_convert_a_state_dict_and_keep_an_existing_result(tmp_path: Path) -> None:
    sd = small_state_dict()
    index = conv.convert(sd, tmp_path / "n", progress=False)
    assert {t.name for t in index.tensors} == set(sd)
    mtime = (tmp_path / "n" / INDEX).stat().st_mtime_ns
    conv.convert(sd, tmp_path / "n", progress=False)  # already there: kept, not rewritten
    assert (tmp_path / "n" / INDEX).stat().st_mtime_ns == mtime


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert conv.main([str(tmp_path / "missing"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert conv.main([str(tmp_path / "empty"), str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_source(shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    src = tmp_path / "src"
    src.mkdir()
    data = ckpt.files[0].read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(conv.ConversionError, match="truncated"):
        conv.convert(src, tmp_path / "out", progress=False)
    assert not any(p.name.startswith(("out", ".out")) for p in tmp_path.iterdir())


def test_disk_full_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_emit = conv.PartitionWriter._emit
    calls = {"n": 0}

    def failing_emit(self: conv.PartitionWriter, data: memoryview) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_emit(self, data)

    monkeypatch.setattr(conv.PartitionWriter, "_emit", failing_emit)
    with pytest.raises(conv.ConversionError, match="no space"):
        conv.convert(small_state_dict(), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def _convert_proc(src: str, dst: str) -> None:
    conv.convert(Path(src), Path(dst), progress=False, chunk_bytes=8192)


def test_two_conversions_at_once(shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp32", "safetensors", progress=False)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_convert_proc, args=(str(ckpt.path), str(tmp_path / "out"))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    loaded = NativeLoader(dram_dir=None).load(tmp_path / "out", CPU).state_dict
    assert verify_state_dict(ckpt, loaded) == ckpt.total_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigkill_mid_conversion_leaves_no_visible_entry(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    torch.save({f"t{i}": torch.zeros(1 << 20) for i in range(48)}, src / "model.pt")  # 192 MiB
    code = ("import sys; from loaders.native.convert import convert; "
            "convert(sys.argv[1], sys.argv[2], progress=False, chunk_bytes=4096, partition_bytes=8 << 20)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(src / "model.pt"), str(tmp_path / "out")])
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.tmp-*/part-00001.bin")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out.tmp-*")), "the killed conversion's hidden temp dir is what remains"
    conv.convert(src / "model.pt", tmp_path / "out", progress=False)  # cleans the dead temp dir, converts
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert len(read_index(tmp_path / "out").tensors) == 48
