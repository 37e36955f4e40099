"""The native checkpoint format: a JSON index and a few large partitions; tensors 4 KiB-aligned; per-chunk xxh3.

Layout of a directory::

    index.json          {"format": "coldstart-native", "version": 1, "alignment": 4096, "chunk_bytes": ...,
                         "partitions": [{"name": "part-00000.bin", "size": ..., "chunks": ["<xxh3-64 hex>", ...]}],
                         "tensors": {name: {"dtype", "shape", "partition", "offset", "nbytes"}}, "total_bytes": ...}
    part-00000.bin      tensor bytes, each tensor at a multiple of ``alignment``; the file is padded to one too

Partitions are padded to the alignment so whole-file O_DIRECT reads are legal, and a loader can place each
partition at its own aligned base in one destination buffer and hand out tensors as views at offsets.
The index is JSON, never pickle. Every field is validated before any byte is read.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "coldstart-native"
FORMAT_VERSION = 1
INDEX = "index.json"
ALIGNMENT = 4096
DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_PARTITION_BYTES = 4 << 30
_PARTITION_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
    "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
    "float64": torch.float64, "int16": torch.int16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class NativeFormatError(Exception):
    """Base of every problem with a native checkpoint (each subclass names the file or tensor and the fix)."""


class IndexError_(NativeFormatError):
    """index.json is malformed: bad JSON, a missing or mistyped field, an unsupported version."""


class UnsupportedVersionError(IndexError_):
    """The index was written by a newer coldstart."""


class UnknownDtypeError(IndexError_):
    """A tensor's dtype is not one this loader knows."""


class TensorBoundsError(IndexError_):
    """A tensor's offset/size lies outside its partition, is misaligned, or disagrees with its shape."""


class OverlappingTensorsError(IndexError_):
    """Two tensors share bytes of a partition."""


class UnsafePartitionNameError(IndexError_):
    """A partition name would leave the checkpoint directory (path traversal) or is not a plain file name."""


class PartitionSizeError(NativeFormatError):
    """A partition file is missing, truncated or longer than the index says."""


class ChunkChecksumError(NativeFormatError):
    """A chunk's bytes differ from the index checksum (corruption on disk or in transit)."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    partition: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Partition:
    name: str
    size: int
    chunks: tuple[str, ...]


@dataclass(frozen=True)
class NativeIndex:
    """A validated index. ``bases[i]`` is partition i's offset in a loader's single destination buffer."""

    partitions: tuple[Partition, ...]
    tensors: tuple[TensorEntry, ...]
    chunk_bytes: int
    alignment: int
    metadata: dict[str, Any]

    @property
    def total_bytes(self) -> int:
        """Bytes of all partitions (padding included): the destination buffer's size."""
        return sum(p.size for p in self.partitions)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bases(self) -> list[int]:
        out, acc = [], 0
        for p in self.partitions:
            out.append(acc)
            acc += p.size
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "alignment": self.alignment,
            "chunk_bytes": self.chunk_bytes, "total_bytes": self.tensor_bytes, "metadata": self.metadata,
            "partitions": [{"name": p.name, "size": p.size, "chunks": list(p.chunks)} for p in self.partitions],
            "tensors": {t.name: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "partition": t.partition,
                                 "offset": t.offset, "nbytes": t.nbytes} for t in self.tensors},
        }


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise IndexError_(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IndexError_(f"{where}: field {key!r} has type {type(value).__name__}, expected {kind}")
    return value


def _nonneg_int(obj: dict[str, Any], key: str, where: str) -> int:
    value = _field(obj, key, int, where)
    if isinstance(value, bool) or value < 0:
        raise IndexError_(f"{where}: field {key!r} = {value!r} must be a non-negative integer")
    return int(value)


def parse_index(raw: str | bytes, where: str = INDEX) -> NativeIndex:
    """Parse and validate an index: every failure is a named ``NativeFormatError`` subclass, never a crash."""
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise IndexError_(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise IndexError_(f"{where}: top level must be an object")
    if doc.get("format") != FORMAT_NAME:
        raise IndexError_(f"{where}: format {doc.get('format')!r}, expected {FORMAT_NAME!r}")
    version = _field(doc, "version", int, where)
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(f"{where}: format version {version} is newer than this coldstart reads "
                                      f"({FORMAT_VERSION}); upgrade coldstart or re-convert the checkpoint")
    if version < 1:
        raise IndexError_(f"{where}: format version {version} is invalid")
    alignment = _nonneg_int(doc, "alignment", where)
    chunk_bytes = _nonneg_int(doc, "chunk_bytes", where)
    if alignment == 0 or alignment & (alignment - 1) or alignment % 512:
        raise IndexError_(f"{where}: alignment {alignment} must be a power of two ≥ 512")
    if chunk_bytes == 0 or chunk_bytes % alignment:
        raise IndexError_(f"{where}: chunk_bytes {chunk_bytes} must be a positive multiple of the alignment")
    partitions = []
    for i, p in enumerate(_field(doc, "partitions", list, where)):
        pw = f"{where}: partitions[{i}]"
        name = _field(p, "name", str, pw)
        if not _PARTITION_RE.match(name) or name in (".", "..") or name == INDEX:
            raise UnsafePartitionNameError(f"{pw}: partition name {name!r} is not a plain file name "
                                           "(path separators and '..' are refused)")
        size = _nonneg_int(p, "size", pw)
        if size % alignment:
            raise IndexError_(f"{pw}: size {size} is not a multiple of the alignment {alignment}")
        chunks = _field(p, "chunks", list, pw)
        if len(chunks) != math.ceil(size / chunk_bytes) or not all(isinstance(c, str) for c in chunks):
            raise IndexError_(f"{pw}: expected {math.ceil(size / chunk_bytes)} chunk checksums, got {len(chunks)}")
        partitions.append(Partition(name, size, tuple(chunks)))
    if len({p.name for p in partitions}) != len(partitions):
        raise IndexError_(f"{where}: duplicate partition names")
    tensors = []
    for name, t in _field(doc, "tensors", dict, where).items():
        tw = f"{where}: tensor {name!r}"
        dtype_name = _field(t, "dtype", str, tw)
        if dtype_name not in DTYPES:
            raise UnknownDtypeError(f"{tw}: unknown dtype {dtype_name!r}; known: {sorted(DTYPES)}")
        dtype = DTYPES[dtype_name]
        shape = _field(t, "shape", list, tw)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise TensorBoundsError(f"{tw}: shape {shape!r} must be a list of non-negative integers")
        part = _nonneg_int(t, "partition", tw)
        offset = _nonneg_int(t, "offset", tw)
        nbytes = _nonneg_int(t, "nbytes", tw)
        if part >= len(partitions):
            raise TensorBoundsError(f"{tw}: partition {part} does not exist ({len(partitions)} partitions)")
        expected = math.prod(shape) * dtype.itemsize
        if nbytes != expected:
            raise TensorBoundsError(f"{tw}: nbytes {nbytes} but shape {shape} of {dtype_name} needs {expected}")
        if offset % alignment:
            raise TensorBoundsError(f"{tw}: offset {offset} is not {alignment}-byte aligned")
        if offset + nbytes > partitions[part].size:
            raise TensorBoundsError(f"{tw}: bytes [{offset}, {offset + nbytes}) lie outside partition "
                                    f"{partitions[part].name} of {partitions[part].size} bytes")
        tensors.append(TensorEntry(name, dtype, tuple(shape), part, offset, nbytes))
    by_part: dict[int, list[TensorEntry]] = {}
    for t in tensors:
        by_part.setdefault(t.partition, []).append(t)
    for entries in by_part.values():
        entries.sort(key=lambda e: e.offset)
        for a, b in itertools.pairwise(entries):
            if a.nbytes and b.nbytes and a.offset + a.nbytes > b.offset:
                raise OverlappingTensorsError(f"{where}: tensors {a.name!r} and {b.name!r} overlap in partition "
                                              f"{partitions[a.partition].name}")
    metadata = doc.get("metadata", {})
    return NativeIndex(tuple(partitions), tuple(tensors), chunk_bytes, alignment,
                       metadata if isinstance(metadata, dict) else {})


def read_index(directory: Path) -> NativeIndex:
    path = Path(directory) / INDEX
    if not path.exists():
        raise PartitionSizeError(f"{path} not found: not a native checkpoint directory (convert one with "
                                 "`coldstart-convert SRC DST`)")
    return parse_index(path.read_bytes(), str(path))


def check_partitions(directory: Path, index: NativeIndex) -> None:
    """Every partition file exists with exactly the indexed size."""
    for p in index.partitions:
        path = Path(directory) / p.name
        if not path.exists():
            raise PartitionSizeError(f"partition {path} is missing")
        size = path.stat().st_size
        if size != p.size:
            raise PartitionSizeError(f"partition {path} has {size} bytes, the index says {p.size} "
                                     f"({'truncated' if size < p.size else 'too long'}); re-convert the checkpoint")


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-n // alignment) * alignment
