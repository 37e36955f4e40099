"""The host arena: one lease at a time, ended by the last tensor; the native loader reads cold loads into it, models of
different sizes one after another never show each other's bytes, the staging ring is kept across loads, and a closed
arena serves nothing."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch

from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.modelbuild import materialize
from loaders import arena
from loaders.native.loader import NativeLoader
from loaders.pagecache import evict
from tests.conftest import model_spec

CPU = torch.device("cpu")


@pytest.fixture
def installed() -> Iterator[arena.HostArena]:
    made = arena.HostArena(4 << 20)
    previous = arena.install(made)
    yield made
    arena.install(previous)
    gc.collect()
    made.close()


def _span(t: torch.Tensor) -> tuple[int, int]:
    start = t.untyped_storage().data_ptr()
    return start, start + t.untyped_storage().nbytes()


def test_a_lease_is_out_until_its_last_view_dies() -> None:
    a = arena.HostArena(1 << 20)
    first = a.lease(4096)
    assert first is not None
    assert a.busy
    assert a.leases == 1
    view = first[100:200].view(torch.int16)
    del first
    gc.collect()
    assert a.busy, "a view of the lease still lives"
    assert a.lease(4096) is None
    del view
    assert not a.busy
    assert a.lease(2 << 20) is None, "more than the arena holds"
    second = a.lease(1 << 20)
    assert second is not None
    assert a.leases == 2
    del second
    a.close()
    with pytest.raises(arena.ArenaClosedError):
        a.lease(1)


def test_the_arena_is_faulted_in_at_construction() -> None:
    from runtimes.warm import rss_bytes

    before = rss_bytes()
    a = arena.HostArena(64 << 20)
    assert rss_bytes() - before >= 60 << 20  # resident now, so a worker's idle RSS counts it
    a.close()


def test_arena_bytes_covers_a_native_checkpoint(shared_store: CheckpointStore) -> None:
    for name, dtype in (("tiny-opt", "fp16"), ("tiny-llama", "fp32"), ("opt-125m", "fp16")):
        spec = model_spec(name)
        need = arena.arena_bytes(t.nbytes for t in spec.tensor_specs(dtype))
        if name.startswith("tiny"):
            assert shared_store.ensure(spec, dtype, "native", progress=False).total_bytes <= need
        assert need >= spec.checkpoint_bytes(dtype)


@pytest.mark.parametrize("fmt", ["native", "safetensors"])
@pytest.mark.parametrize("direct_io", ["on", "off"])
def test_models_of_different_sizes_reuse_the_arena_without_each_others_bytes(
        shared_store: CheckpointStore, installed: arena.HostArena, fmt: str, direct_io: str) -> None:
    big = shared_store.ensure(model_spec("tiny-llama"), "fp32", fmt, progress=False)
    small = shared_store.ensure(model_spec("tiny-opt"), "fp16", fmt, progress=False)
    assert small.total_bytes < big.total_bytes <= installed.nbytes
    loader = NativeLoader(format=fmt, dram_dir=None, staging="direct", direct_io=direct_io, chunk_bytes=16384)
    spans = []
    for ckpt in (big, small, big):
        evict(ckpt.files)
        result = loader.load(ckpt.path, CPU)
        materialize(result.state_dict, CPU)
        assert result.phases_s["arena"] == 1.0
        assert result.info["path"].endswith("→arena")
        assert result.phases_s["faulted_fraction"] == 0.0  # nothing to fault in: the arena was
        assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes  # none of the previous model's bytes
        spans.append({_span(t)[0] for t in result.state_dict.values() if t.numel()})
        del result
    assert spans[0] == spans[1] == spans[2]
    assert len(spans[0]) == 1
    assert installed.leases == 3


def test_a_second_load_while_the_first_model_lives_gets_fresh_memory(shared_store: CheckpointStore,
                                                                     installed: arena.HostArena) -> None:
    a = shared_store.ensure(model_spec("tiny-llama"), "fp32", "native", progress=False)
    b = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    loader = NativeLoader(dram_dir=None, staging="direct", direct_io="on")
    first = loader.load(a.path, CPU)
    second = loader.load(b.path, CPU)
    assert first.phases_s["arena"] == 1.0
    assert second.phases_s["arena"] == 0.0
    assert second.info["path"].endswith("→fresh")
    assert verify_state_dict(a, first.state_dict) == a.total_bytes  # the first model was not overwritten
    assert verify_state_dict(b, second.state_dict) == b.total_bytes


def test_a_model_larger_than_the_arena_gets_fresh_memory(shared_store: CheckpointStore) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-llama"), "fp32", "native", progress=False)
    small = arena.HostArena(64 << 10)
    previous = arena.install(small)
    try:
        result = NativeLoader(dram_dir=None, staging="direct").load(ckpt.path, CPU)
        assert result.phases_s["arena"] == 0.0
        assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
        assert not small.busy
    finally:
        arena.install(previous)
        small.close()


@pytest.mark.parametrize("direct_io", ["on", "off"])  # O_DIRECT reads into the kept ring need it page-aligned
def test_the_staging_ring_is_kept_across_loads(shared_store: CheckpointStore, installed: arena.HostArena,
                                               direct_io: str) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    loader = NativeLoader(format="safetensors", staging="ring", chunk_bytes=32768, ring_bytes=131072,
                          dram_dir=None, direct_io=direct_io)
    rings = []
    for _ in range(2):
        result = loader.load(ckpt.path, CPU)
        assert result.phases_s["ring_kept"] == 1.0
        assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
        rings.append(installed._ring.data_ptr() if installed._ring is not None else None)
    assert rings[0] is not None
    assert rings[0] == rings[1]
    assert installed.ring_allocations == 1  # made once (pinned once, on CUDA), then reused


@pytest.mark.gpu
def test_the_pinned_ring_stays_pinned_across_cuda_loads(shared_store: CheckpointStore) -> None:
    from runtimes.warm import start_arena, stop_arena

    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    made = start_arena(0, 1 << 20, "cuda")
    try:
        assert made._ring is not None
        assert made._ring.is_pinned()
        ptr = made._ring.data_ptr()
        loader = NativeLoader(dram_dir=None, ring_bytes=1 << 20)
        for _ in range(2):
            result = loader.load(ckpt.path, torch.device("cuda"))
            torch.cuda.synchronize()
            assert result.phases_s["ring_kept"] == 1.0
            assert verify_state_dict(ckpt, {k: v.cpu() for k, v in result.state_dict.items()}) == ckpt.total_bytes
        assert made._ring.data_ptr() == ptr
        assert made.ring_allocations == 1
    finally:
        stop_arena(made)
