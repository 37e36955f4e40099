"""Eviction, warming and residency measurement against the real page cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loaders.pagecache import evict, make_copies, resident_fraction, resident_pages, warm


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "data.bin"
    path.write_bytes(os.urandom(8 << 20))
    return path


def test_evict_then_warm(data_file: Path) -> None:
    warm([data_file])
    assert resident_fraction([data_file]) > 0.99
    after = evict([data_file])
    assert after < 0.05, f"posix_fadvise left {after:.1%} resident"
    assert warm([data_file]) > 0.99


def test_partial_residency_is_measured(data_file: Path) -> None:
    evict([data_file])
    with open(data_file, "rb") as f:
        f.read(2 << 20)  # a quarter of the file (plus readahead)
    frac = resident_fraction([data_file])
    assert 0.2 <= frac < 1.0


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.touch()
    assert resident_pages(empty) == (0, 0)
    assert resident_fraction([empty]) == 0.0


def test_copies_are_distinct_files_and_cold(tmp_path: Path, data_file: Path) -> None:
    src = data_file.parent
    copies = make_copies(src, tmp_path / "copies", 3)
    inodes = {(c / "data.bin").stat().st_ino for c in copies} | {data_file.stat().st_ino}
    assert len(inodes) == 4
    for c in copies:
        assert (c / "data.bin").read_bytes() == data_file.read_bytes()
    evict(c / "data.bin" for c in copies)
    assert resident_fraction([c / "data.bin" for c in copies]) < 0.05


def test_sampled_residency_tracks_the_full_count(data_file: Path) -> None:
    warm([data_file])
    size = data_file.stat().st_size
    fd = os.open(data_file, os.O_RDONLY)
    try:
        os.fdatasync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, size // 2, os.POSIX_FADV_DONTNEED)  # the first half leaves the cache
    finally:
        os.close(fd)
    full = resident_fraction([data_file])
    sampled = resident_fraction([data_file], windows=32)
    assert 0.3 < full < 0.7
    assert sampled == pytest.approx(full, abs=0.1)
    resident, looked = resident_pages(data_file, windows=32, window_pages=4)
    assert looked == 32 * 4
    assert 0 < resident < looked


def test_fresh_warm_rereads_a_resident_file(data_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fresh=True drops what is cached first (so the cache holds the file as one read leaves it), then reads it."""
    import loaders.pagecache as pc

    warm([data_file])
    evicted: list[float] = []
    real_evict = pc.evict
    monkeypatch.setattr(pc, "evict", lambda paths: evicted.append(real_evict(paths)) or evicted[-1])
    assert pc.warm([data_file]) > 0.99
    assert evicted == []
    assert pc.warm([data_file], fresh=True) > 0.99
    assert len(evicted) == 1
    assert evicted[0] < 0.05, evicted
