"""DRAM tier: bounded, LRU, never evicts an entry being read, atomic insertion, shared by processes."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.checkpoints import CheckpointStore, verify_state_dict
from loaders.native.loader import NativeLoader
from loaders.native.tiers import DramTier, TierCapacityError
from tests.conftest import model_spec

CPU = torch.device("cpu")


def _entry(tmp: Path, name: str, size: int) -> Path:
    d = tmp / "src" / name
    d.mkdir(parents=True)
    (d / "data.bin").write_bytes(b"x" * size)
    return d


def test_lru_eviction_respects_capacity(tmp_path: Path) -> None:
    tier = DramTier(tmp_path / "dram", capacity_bytes=250)
    for name in ("a", "b"):
        tier.insert(name, _entry(tmp_path, name, 100))
    with tier.reading("a"):
        pass  # a is now more recently used than b
    tier.insert("c", _entry(tmp_path, "c", 100))
    keys = {k for _, k, _ in tier.entries()}
    assert keys == {"a", "c"}, keys
    assert tier.used_bytes() <= tier.capacity_bytes


def test_entry_being_read_is_never_evicted(tmp_path: Path) -> None:
    tier = DramTier(tmp_path / "dram", capacity_bytes=150)
    tier.insert("a", _entry(tmp_path, "a", 100))
    with tier.reading("a") as path:
        assert path is not None
        b = _entry(tmp_path, "b", 100)
        with pytest.raises(TierCapacityError, match="not being read"):
            tier.insert("b", b)
        assert (path / "data.bin").exists()
    tier.insert("b", b)  # once released, a can go
    assert {k for _, k, _ in tier.entries()} == {"b"}


def test_too_large_for_the_tier(tmp_path: Path) -> None:
    tier = DramTier(tmp_path / "dram", capacity_bytes=50)
    with pytest.raises(TierCapacityError, match="dram_capacity_bytes"):
        tier.insert("a", _entry(tmp_path, "a", 100))
    assert tier.entries() == []


def test_hot_load_comes_from_the_dram_tier(shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    loader = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    cold = loader.load(ckpt.path, CPU)
    assert set(cold.bytes_by_tier) == {"ssd"}
    loader.stage_in_dram(ckpt.path)
    hot = loader.load(ckpt.path, CPU)
    assert set(hot.bytes_by_tier) == {"dram"}
    assert hot.phases_s["verified"] == 0.0  # the tier copy of a verified checkpoint is not hashed again
    assert verify_state_dict(ckpt, hot.state_dict) == ckpt.total_bytes


def _load_proc(path: str, dram: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import tests.conftest  # noqa: F401  (import path check in the child)

    loader = NativeLoader(dram_dir=dram, dram_capacity_bytes=1 << 30)
    loader.stage_in_dram(Path(path))
    result = loader.load(Path(path), CPU)
    out.put({k: v.sum().item() if v.is_floating_point() else int(v.sum()) for k, v in result.state_dict.items()})


def test_two_processes_stage_and_load_at_once(shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp32", "native", progress=False)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_load_proc, args=(str(ckpt.path), str(tmp_path / "dram"), q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert [k for _, k, _ in DramTier(tmp_path / "dram").entries()] == [NativeLoader.tier_key(ckpt.path)]


def test_a_process_that_looked_before_another_staged_keeps_the_fresh_entry(shared_store: CheckpointStore,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of two processes staging at once: B looked (no entry), A staged, B must not remove A's fresh entry
    (A may be planning or reading it right then) — before the fix B's "drop a stale entry" removed it."""
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp32", "native", progress=False)
    a = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    b = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    staged = a.stage_in_dram(ckpt.path)
    (staged / "a-was-here").touch()  # marks this entry (a re-staged one could reuse the inode number)
    assert b.dram is not None
    real_reading = b.dram.reading

    @contextlib.contextmanager
    def looked_too_early(key: str) -> Iterator[Path | None]:
        yield None  # what B saw before A's entry appeared

    monkeypatch.setattr(b.dram, "reading", looked_too_early)
    assert b.stage_in_dram(ckpt.path) == staged
    monkeypatch.setattr(b.dram, "reading", real_reading)
    assert (staged / "a-was-here").exists()  # the same entry, not removed and staged again
