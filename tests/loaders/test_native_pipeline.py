"""Native loader pipeline: formats × dtypes equal the manifest; the staging ring stays bounded; same model built."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.modelbuild import build_model, first_token, materialize
from harness.zoo import DTYPES
from loaders.native.loader import NativeLoader
from loaders.native.pipeline import ThreadCopyEngine
from tests.conftest import model_spec

CPU = torch.device("cpu")


@pytest.mark.parametrize("fmt", ["native", "safetensors"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize(("staging", "direct_io"), [("direct", "off"), ("direct", "on"), ("ring", "off")])
def test_equivalence(shared_store: CheckpointStore, fmt: str, dtype: str, staging: str, direct_io: str) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-llama"), dtype, fmt, progress=False)
    loader = NativeLoader(format=fmt, staging=staging, direct_io=direct_io, dram_dir=None, chunk_bytes=16384,
                          ring_bytes=65536)
    result = loader.load(ckpt.path, CPU)
    materialize(result.state_dict, CPU)
    assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
    assert result.bytes_by_tier["ssd"] >= ckpt.total_bytes
    assert result.phases_s["direct_io"] == float(direct_io == "on")


def test_ring_smaller_than_model_is_bounded(shared_store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model 4x (and more) larger than the ring loads; staging buffers in flight never exceed the ring."""
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp32", "safetensors", progress=False)
    made: list[int] = []
    lock = threading.Lock()
    real = ThreadCopyEngine.make_buffer

    def counting(self: ThreadCopyEngine, nbytes: int) -> torch.Tensor:
        with lock:
            made.append(nbytes)
        return real(self, nbytes)

    monkeypatch.setattr(ThreadCopyEngine, "make_buffer", counting)
    ring = ckpt.total_bytes // 4
    loader = NativeLoader(format="safetensors", staging="ring", threads=2, chunk_bytes=32768, ring_bytes=ring,
                          dram_dir=None)
    result = loader.load(ckpt.path, CPU)
    assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
    assert sum(made) <= ring, f"{sum(made)} bytes of staging buffers for a {ring}-byte ring"
    assert result.phases_s["max_in_flight"] <= ring // 32768
    assert ckpt.total_bytes >= 4 * ring


def test_bad_knobs_are_named() -> None:
    with pytest.raises(ValueError, match="staging"):
        NativeLoader(staging="sideways", dram_dir=None)
    with pytest.raises(ValueError, match="ring_bytes"):
        NativeLoader(ring_bytes=4096, chunk_bytes=8192, dram_dir=None)
    with pytest.raises(ValueError, match="threads"):
        NativeLoader(threads=0, dram_dir=None)


def test_same_first_token_as_the_baseline(shared_store: CheckpointStore) -> None:
    spec = model_spec("tiny-opt")
    ckpt = shared_store.ensure(spec, "fp32", "native", progress=False)
    native = NativeLoader(dram_dir=None).load(ckpt.path, CPU).state_dict
    from loaders.safetensors import SafetensorsLoader

    ref_ckpt = shared_store.ensure(spec, "fp32", "safetensors", progress=False)
    ref = SafetensorsLoader().load(ref_ckpt.path, CPU).state_dict
    assert first_token(build_model(spec, "fp32", native, CPU), CPU) == \
        first_token(build_model(spec, "fp32", ref, CPU), CPU)


def test_unknown_directory(tmp_path: Path) -> None:
    from loaders.base import UnsupportedCheckpointError

    with pytest.raises(UnsupportedCheckpointError, match="neither"):
        NativeLoader(dram_dir=None).load(tmp_path, CPU)


def test_spans_merge_a_files_contiguous_chunks_into_one_range(tmp_path: Path) -> None:
    from loaders.native.mapping import spans
    from loaders.native.pipeline import Segment

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    chunk = 1 << 20
    segs = [Segment(a, off, chunk, off, "d", "a") for off in range(0, 24 * chunk, chunk)]
    segs += [Segment(b, off, chunk, 32 * chunk + off, None, "b") for off in range(0, 8 * chunk, chunk)]
    segs.append(Segment(b, 9 * chunk, chunk, 41 * chunk, None, "b"))  # after a gap: a run of its own
    out = spans(segs)
    assert [(s.path, s.file_offset, s.length, s.dest_offset) for s in out] == [
        (a, 0, 24 * chunk, 0), (b, 0, 8 * chunk, 32 * chunk), (b, 9 * chunk, chunk, 41 * chunk)]
    assert all(s.digest is None for s in out)  # merged ranges carry no chunk checksum


def test_cold_cpu_load_touches_its_pages_inside_the_pipeline(shared_store: CheckpointStore) -> None:
    from loaders.pagecache import evict, warm

    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    loader = NativeLoader(dram_dir=None, staging="map")
    assert evict(ckpt.files) < 0.5
    cold = loader.load(ckpt.path, CPU)
    assert cold.phases_s["touched"] == 1.0
    assert cold.phases_s["mapped"] == 1.0
    assert verify_state_dict(ckpt, cold.state_dict) == ckpt.total_bytes
    del cold
    warm(ckpt.files)
    hot = loader.load(ckpt.path, CPU)
    assert hot.phases_s["touched"] == 0.0  # resident pages were touched by whoever read them in
    assert verify_state_dict(ckpt, hot.state_dict) == ckpt.total_bytes
