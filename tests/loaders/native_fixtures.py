"""Small native checkpoints for the native loader's tests."""

from __future__ import annotations

from pathlib import Path

import torch

from loaders.native.convert import convert


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(300, 70, generator=g).half(),
        "b.bias": torch.randn(13, generator=g),
        "c.weight": torch.randn(64, 64, generator=g).bfloat16(),
        "d.q": torch.randint(-127, 127, (1000,), generator=g, dtype=torch.int8),
        "e.empty": torch.empty(0, 5),
    }


def make_native(tmp: Path, chunk_bytes: int = 8192, partition_bytes: int = 40_000) -> Path:
    dst = tmp / "native"
    convert(small_state_dict(), dst, partition_bytes=partition_bytes, chunk_bytes=chunk_bytes, progress=False)
    return dst
