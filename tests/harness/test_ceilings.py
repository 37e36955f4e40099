"""Ceilings: measured, positive, and mapped to the cache state they bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from harness.ceilings import bounding_ceiling, measure_ceilings


def test_measure_ceilings_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(32 << 20))
    c = measure_ceilings([path], torch.device("cpu"), threads=2, max_bytes=32 << 20)
    g = c["gbps"]
    for name in ("cold_read", "pagecache_read", "memcpy", "disk_read", "cold_read_fresh", "disk_read_fresh"):
        assert g[name] is not None, name
        assert g[name] > 0, name
    assert g["disk_read"] == max(v for v in (g["odirect_read"], g["cold_read"]) if v)
    assert g["disk_read_fresh"] == max(v for v in (g["odirect_read_fresh"], g["cold_read_fresh"]) if v)
    assert c["pagecache_read"]["bytes"] == 32 << 20
    assert c["cold_read_fresh"]["bytes"] == 32 << 20
    assert "h2d_pinned" not in g  # CPU run: no host→device ceiling invented


def test_bounding_ceiling_by_state() -> None:
    g = {"disk_read": 2.0, "pagecache_read": 8.0, "memcpy": 15.0, "h2d_pinned": 5.0}
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert bounding_ceiling("cold", cpu, g) == ("disk_read", 2.0)
    assert bounding_ceiling("warm", cpu, g) == ("pagecache_read", 8.0)
    assert bounding_ceiling("hot", cpu, g) == ("memcpy", 15.0)
    assert bounding_ceiling("cold", gpu, g) == ("disk_read", 2.0)  # the disk is slower than PCIe
    assert bounding_ceiling("warm", gpu, g) == ("h2d_pinned", 5.0)  # PCIe is slower than the page cache
    with pytest.raises(ValueError, match="cold"):
        bounding_ceiling("lukewarm", cpu, g)


def test_a_cold_load_into_fresh_memory_is_held_to_the_fresh_memory_ceiling() -> None:
    g = {"disk_read": 2.0, "disk_read_fresh": 1.2, "pagecache_read": 8.0, "memcpy": 15.0, "h2d_pinned": 5.0}
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert bounding_ceiling("cold", cpu, g, "fresh") == ("disk_read_fresh", 1.2)
    assert bounding_ceiling("cold", cpu, g, "reused") == ("disk_read", 2.0)  # a pool worker's arena
    assert bounding_ceiling("cold", gpu, g, "fresh") == ("disk_read", 2.0)  # the pinned ring is reused memory
    assert bounding_ceiling("warm", cpu, g, "fresh") == ("pagecache_read", 8.0)
    assert bounding_ceiling("cold", cpu, {"disk_read": 2.0}, "fresh") == ("disk_read", 2.0)  # not measured
    with pytest.raises(ValueError, match="memory='recycled'"):
        bounding_ceiling("cold", cpu, g, "recycled")


def test_the_fresh_memory_read_lands_every_range_in_its_own_place(tmp_path: Path) -> None:
    from harness.ceilings import _parallel_read, _ranges

    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(8 << 20))
    ranges = _ranges([path], 1 << 20, 8 << 20)
    assert _parallel_read(ranges, 3, 1 << 20, direct=False, fresh=True)[0] == 8 << 20
    assert _parallel_read(ranges, 3, 1 << 20, direct=True, fresh=True)[0] == 8 << 20
