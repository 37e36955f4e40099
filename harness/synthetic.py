"""Seeded synthetic tensor values: each tensor's bytes depend only on (seed, name), generated in bounded chunks.

Weights are built from random bits (numpy's PCG64, several times faster than sampling normals): a random sign, a random
mantissa and an exponent drawn from four values, so magnitudes are log-uniform in [2^-11, 2^-7), never NaN or
Inf, and a real forward pass stays finite.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from harness.zoo import INT8_SCALE_SUFFIX, TensorSpec

GENERATOR_VERSION = 2  # bump when values change: cached checkpoints of another version are regenerated
CHUNK_ELEMENTS = 1 << 23  # 8 Mi elements (32 MiB of float32 scratch) per generated chunk
WEIGHT_STD = 0.02  # the usual init scale: keeps activations finite through the real forward pass


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one tensor, stable across processes and independent of write order."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _is_norm_weight(name: str, ndim: int) -> bool:
    leaf = name.rsplit(".", 2)
    return ndim == 1 and name.endswith("weight") and any("norm" in p or p.startswith("ln") for p in leaf)


# Per float dtype: (biased exponent base, mantissa bits, unsigned type). The base is a multiple of 4, so the two
# random bits already at the exponent's bottom pick e ∈ base + {0..3} and a value is ``(u & keep) | base_bits``:
# |value| ∈ [2^-11, 2^-7) for every dtype (fp16 bias 15 → base 4; bf16/fp32 bias 127 → base 116).
_FLOAT_BITS: dict[torch.dtype, tuple[int, int, type[np.unsignedinteger]]] = {
    torch.float16: (4, 10, np.uint16),
    torch.bfloat16: (116, 7, np.uint16),
    torch.float32: (116, 23, np.uint32),
}


def _random_floats(rng: np.random.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    base, shift, utype = _FLOAT_BITS[dtype]
    bits = np.iinfo(utype).bits
    keep = utype((1 << (bits - 1)) | (3 << shift) | ((1 << shift) - 1))  # sign, 2 low exponent bits, mantissa
    u = rng.integers(0, np.iinfo(utype).max, size=shape, dtype=utype, endpoint=True)
    np.bitwise_and(u, keep, out=u)
    np.bitwise_or(u, utype(base << shift), out=u)
    return torch.from_numpy(u.view(np.dtype(f"i{bits // 8}"))).view(dtype)


def iter_chunks(ts: TensorSpec, seed: int) -> Iterator[torch.Tensor]:
    """Yield the tensor's values as consecutive row blocks (C order); concatenated they form the tensor."""
    rng = np.random.Generator(np.random.PCG64(tensor_seed(seed, ts.name)))
    shape = ts.shape or (1,)
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(row, 1))
    norm = _is_norm_weight(ts.name, len(ts.shape))
    for start in range(0, shape[0], rows_per_chunk):
        n = min(rows_per_chunk, shape[0] - start)
        chunk_shape = (n, *shape[1:]) if ts.shape else ()
        if ts.dtype == torch.int8:
            yield torch.from_numpy(rng.integers(-127, 127, size=chunk_shape, dtype=np.int8, endpoint=True))
        elif ts.name.endswith(INT8_SCALE_SUFFIX):
            # per-row scales so that dequantized weights have about WEIGHT_STD spread
            scale = (rng.random(chunk_shape, dtype=np.float32) * 0.5 + 0.75) * (WEIGHT_STD * math.sqrt(3) / 127)
            yield torch.from_numpy(scale).to(ts.dtype)
        elif norm:  # norm scales around 1, as trained models have them
            yield torch.from_numpy(1.0 + rng.standard_normal(chunk_shape, dtype=np.float32) * WEIGHT_STD).to(ts.dtype)
        elif ts.dtype in _FLOAT_BITS:
            yield _random_floats(rng, chunk_shape, ts.dtype)
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
