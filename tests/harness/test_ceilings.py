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
    for name in ("cold_read", "pagecache_read", "memcpy", "disk_read"):
        assert g[name] is not None, name
        assert g[name] > 0, name
    assert g["disk_read"] == max(v for v in (g["odirect_read"], g["cold_read"]) if v)
    assert c["pagecache_read"]["bytes"] == 32 << 20
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
