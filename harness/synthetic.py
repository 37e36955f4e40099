"""Seeded synthetic tensor values: each tensor's bytes depend only on (seed, name), generated in bounded chunks."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from harness.zoo import INT8_SCALE_SUFFIX, TensorSpec

CHUNK_ELEMENTS = 1 << 23  # 8 Mi elements (32 MiB of float32 scratch) per generated chunk
WEIGHT_STD = 0.02  # the usual init scale: keeps activations finite through the real forward pass


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one tensor, stable across processes and independent of write order."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _is_norm_weight(name: str, ndim: int) -> bool:
    leaf = name.rsplit(".", 2)
    return ndim == 1 and name.endswith("weight") and any("norm" in p or p.startswith("ln") for p in leaf)


def iter_chunks(ts: TensorSpec, seed: int) -> Iterator[torch.Tensor]:
    """Yield the tensor's values as consecutive row blocks (C order); concatenated they form the tensor."""
    g = torch.Generator().manual_seed(tensor_seed(seed, ts.name))
    shape = ts.shape or (1,)
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(row, 1))
    norm = _is_norm_weight(ts.name, len(ts.shape))
    for start in range(0, shape[0], rows_per_chunk):
        n = min(rows_per_chunk, shape[0] - start)
        chunk_shape = (n, *shape[1:]) if ts.shape else ()
        if ts.dtype == torch.int8:
            yield torch.randint(-127, 128, chunk_shape, generator=g, dtype=torch.int8)
        elif ts.name.endswith(INT8_SCALE_SUFFIX):
            # per-row scales so that dequantized weights have about WEIGHT_STD spread
            scale = (torch.rand(chunk_shape, generator=g) * 0.5 + 0.75) * (WEIGHT_STD * math.sqrt(3) / 127)
            yield scale.to(ts.dtype)
        elif ts.dtype.is_floating_point:
            t = torch.randn(chunk_shape, generator=g, dtype=torch.float32).mul_(WEIGHT_STD)
            if norm:
                t.add_(1.0)
            yield t.to(ts.dtype)
        else:
            yield torch.zeros(chunk_shape, dtype=ts.dtype)


def synthetic_tensor(ts: TensorSpec, seed: int) -> torch.Tensor:
    """The whole tensor, filled chunk by chunk in place (peak memory: the tensor plus one chunk)."""
    out = torch.empty(ts.numel, dtype=ts.dtype)
    offset = 0
    for chunk in iter_chunks(ts, seed):
        n = chunk.numel()
        out[offset : offset + n].copy_(chunk.reshape(-1))
        offset += n
    return out.reshape(ts.shape)
