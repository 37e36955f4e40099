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

import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

FORMAT_NAME = "coldstart-native"
FORMAT_VERSION = 1
INDEX = "index.json"
ALIGNMENT = 4096
DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_PARTITION_BYTES = 4 << 30
MAX_INDEX_BYTES = 64 << 20  # the default cap on an index (or safetensors header) a loader reads: loader.max_index_bytes
INT_LIMIT = 1 << 63  # element counts, byte sizes, offsets and strides must stay below this (torch's int64 sizes)
_PARTITION_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
    "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
    "float64": torch.float64, "int16": torch.int16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class NativeFormatError(Exception):
    """Base of every problem with a checkpoint the native loader reads (each subclass names the file or tensor and
    the fix). ``path`` is the file at fault and ``entry`` the tensor (or file name) in it, where one is known."""

    def __init__(self, message: str, *, path: str | Path | None = None, entry: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.entry = entry


class IndexError_(NativeFormatError):
    """index.json is malformed: bad JSON, a missing or mistyped field, an unsupported version."""


class UnsupportedVersionError(IndexError_):
    """The index was written by a newer coldstart."""


class UnknownDtypeError(IndexError_):
    """A tensor's dtype is not one this loader knows."""


class TensorBoundsError(IndexError_):
    """A tensor's offset/size lies outside its partition, is misaligned, or disagrees with its shape."""


class ElementCountError(TensorBoundsError):
    """A tensor's element count or byte size passes 2^63, or its elements need more bytes than its entry holds."""


class StrideError(TensorBoundsError):
    """A strided entry's stride pattern reads outside the tensor's bytes (or its stride is out of range)."""


class OverlappingTensorsError(IndexError_):
    """Two tensors share bytes of a partition."""


class DuplicateTensorError(IndexError_):
    """Two entries (or two JSON keys) name the same tensor: which one is meant cannot be told."""


class IndexTooLargeError(IndexError_):
    """The index (or a safetensors header) is larger than ``loader.max_index_bytes``."""


class UnsafeFileError(NativeFormatError):
    """A checkpoint file the loader would open is not a plain regular file inside the checkpoint directory."""


class OutsideCheckpointError(UnsafeFileError):
    """A file of the checkpoint is a symbolic link that leaves the checkpoint directory."""


class NotRegularFileError(UnsafeFileError):
    """A file of the checkpoint is a FIFO, a device, a socket or a directory (reading it could block forever or
    never end)."""


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


def load_json(raw: str | bytes, where: str, error: type[NativeFormatError] = IndexError_) -> Any:
    """``json.loads`` for indexes: a key that appears twice in one object is a ``DuplicateTensorError`` (plain JSON
    keeps the last one silently), and every parse failure (bad UTF-8, an integer of thousands of digits, deep
    nesting) is ``error``."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            seen: set[str] = set()
            dup = next(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise DuplicateTensorError(f"{where}: key {dup!r} appears twice in one object; which entry is meant "
                                       "cannot be told: fix or re-convert the checkpoint", path=where, entry=dup)
        return out

    try:
        return json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError and int-size limits alike
        raise error(f"{where} is not valid JSON: {exc}", path=where) from exc


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise IndexError_(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IndexError_(f"{where}: field {key!r} has type {type(value).__name__}, expected {kind}")
    return value


def _nonneg_int(obj: dict[str, Any], key: str, where: str) -> int:
    value = _field(obj, key, int, where)
    if isinstance(value, bool) or not 0 <= value < INT_LIMIT:
        raise IndexError_(f"{where}: field {key!r} = {value!r} must be a non-negative integer below 2^63")
    return int(value)


class Extent(NamedTuple):
    """One tensor's bytes as ``check_extents`` sees them: ``nbytes`` at ``offset`` of region ``region`` (a partition,
    a file, or one global range), holding ``shape`` elements of ``itemsize`` bytes laid out by ``stride`` (None:
    contiguous, so ``nbytes`` must equal the elements' bytes exactly)."""

    name: str
    region: int
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    itemsize: int
    stride: tuple[int, ...] | None = None


def _numel(shape: tuple[int, ...]) -> int:
    """The element count, stopping once it passes 2^63 (a shape of huge dims must not cost a huge product)."""
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n *= d
        if n >= INT_LIMIT or n <= -INT_LIMIT:
            return INT_LIMIT
    return n


def _check_stride(e: Extent, numel: int, where: str) -> None:
    assert e.stride is not None
    tw = f"{where}: tensor {e.name!r}"
    if len(e.stride) != len(e.shape) or any(not 0 <= s < INT_LIMIT for s in e.stride):
        raise StrideError(f"{tw}: stride {list(e.stride)} does not match shape {list(e.shape)} (one stride in "
                          "[0, 2^63) per dimension)", path=where, entry=e.name)
    span = 0 if numel == 0 else (1 + sum((d - 1) * s for d, s in zip(e.shape, e.stride, strict=True)))
    if span * e.itemsize > e.nbytes:
        raise StrideError(f"{tw}: shape {list(e.shape)} with stride {list(e.stride)} needs {span * e.itemsize} "
                          f"bytes, the index gives {e.nbytes}", path=where, entry=e.name)
    if numel * e.itemsize > e.nbytes:
        raise ElementCountError(f"{tw}: {numel} elements of {e.itemsize} bytes in an entry of {e.nbytes} bytes "
                                f"(stride {list(e.stride)} repeats elements)", path=where, entry=e.name)


def check_extents(extents: Iterable[Extent], region_sizes: Sequence[int], region_names: Sequence[str],
                  where: str) -> None:
    """The validation pass every reader (native index, ServerlessLLM index, safetensors headers) runs before any
    tensor byte is read. Rejects, each with a named error carrying the file (``where``) and the tensor: a name given
    twice; offsets, sizes, dims or strides outside [0, 2^63); element counts whose bytes pass 2^63 or the entry's
    ``nbytes``; contiguous entries whose ``nbytes`` differ from their shape's; stride patterns that reach past the
    entry's bytes; bytes outside their region; and any two non-empty entries sharing a byte (sorted by offset and
    compared with the furthest end so far, so an empty tensor between two overlapping ones hides nothing)."""
    seen: set[str] = set()
    by_region: dict[int, list[tuple[int, int, str]]] = {}
    n_regions = len(region_sizes)
    for e in extents:
        name, region, offset, nbytes, shape, itemsize, stride = e
        if name in seen:
            raise DuplicateTensorError(f"{where}: tensor {name!r} appears twice; which entry is meant cannot be told",
                                       path=where, entry=name)
        seen.add(name)
        if not (0 <= offset < INT_LIMIT and 0 <= nbytes < INT_LIMIT):
            raise TensorBoundsError(f"{where}: tensor {name!r}: offset {offset} and size {nbytes} must lie in "
                                    "[0, 2^63)", path=where, entry=name)
        numel = _numel(shape)
        if numel * itemsize >= INT_LIMIT or (shape and (min(shape) < 0 or max(shape) >= INT_LIMIT)):
            raise ElementCountError(f"{where}: tensor {name!r}: shape {list(shape)} has more than 2^63 bytes of "
                                    "elements (or a dimension outside [0, 2^63))", path=where, entry=name)
        if stride is None:
            if nbytes != numel * itemsize:
                raise TensorBoundsError(f"{where}: tensor {name!r}: nbytes {nbytes} but shape {list(shape)} of "
                                        f"{itemsize}-byte elements needs {numel * itemsize}", path=where, entry=name)
        else:
            _check_stride(e, numel, where)
        if not 0 <= region < n_regions:
            raise TensorBoundsError(f"{where}: tensor {name!r}: partition {region} does not exist ({n_regions} "
                                    "partitions)", path=where, entry=name)
        if offset + nbytes > region_sizes[region]:
            raise TensorBoundsError(f"{where}: tensor {name!r}: bytes [{offset}, {offset + nbytes}) lie outside "
                                    f"{region_names[region]} of {region_sizes[region]} bytes", path=where, entry=name)
        if nbytes:
            by_region.setdefault(region, []).append((offset, offset + nbytes, name))
    for region, spans in by_region.items():
        spans.sort()
        far_end, owner = -1, ""
        for start, end, name in spans:
            if start < far_end:
                raise OverlappingTensorsError(f"{where}: tensors {owner!r} and {name!r} overlap in "
                                              f"{region_names[region]}", path=where, entry=name)
            if end > far_end:
                far_end, owner = end, name


def parse_index(raw: str | bytes, where: str = INDEX) -> NativeIndex:
    """Parse and validate an index: every failure is a named ``NativeFormatError`` subclass, never a crash."""
    doc = load_json(raw, where)
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
                                           "(path separators and '..' are refused)", path=where, entry=name)
        size = _nonneg_int(p, "size", pw)
        if size % alignment:
            raise IndexError_(f"{pw}: size {size} is not a multiple of the alignment {alignment}")
        chunks = _field(p, "chunks", list, pw)
        n_chunks = -(-size // chunk_bytes)
        if len(chunks) != n_chunks or not all(isinstance(c, str) for c in chunks):
            raise IndexError_(f"{pw}: expected {n_chunks} chunk checksums, got {len(chunks)}")
        partitions.append(Partition(name, size, tuple(chunks)))
    if len({p.name for p in partitions}) != len(partitions):
        raise IndexError_(f"{where}: duplicate partition names")
    tensors, extents = [], []
    for name, t in _field(doc, "tensors", dict, where).items():
        tw = f"{where}: tensor {name!r}"
        dtype_name = _field(t, "dtype", str, tw)
        if dtype_name not in DTYPES:
            raise UnknownDtypeError(f"{tw}: unknown dtype {dtype_name!r}; known: {sorted(DTYPES)}", path=where,
                                    entry=name)
        dtype = DTYPES[dtype_name]
        shape = _field(t, "shape", list, tw)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise TensorBoundsError(f"{tw}: shape {shape!r} must be a list of non-negative integers", path=where,
                                    entry=name)
        part = _nonneg_int(t, "partition", tw)
        offset = _nonneg_int(t, "offset", tw)
        nbytes = _nonneg_int(t, "nbytes", tw)
        if offset % alignment:
            raise TensorBoundsError(f"{tw}: offset {offset} is not {alignment}-byte aligned", path=where, entry=name)
        extents.append(Extent(name, part, offset, nbytes, tuple(shape), dtype.itemsize))
        tensors.append(TensorEntry(name, dtype, tuple(shape), part, offset, nbytes))
    check_extents(extents, [p.size for p in partitions], [f"partition {p.name}" for p in partitions], where)
    metadata = doc.get("metadata", {})
    return NativeIndex(tuple(partitions), tuple(tensors), chunk_bytes, alignment,
                       metadata if isinstance(metadata, dict) else {})


# -- opening a checkpoint's files --------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")  # a Hugging Face cache repository's folder name


def hub_blob(directory: Path, real: Path) -> bool:
    """Whether ``real`` (a resolved path) is a blob of the Hugging Face cache repository whose snapshot ``directory``
    is. The cache stores each file once, in ``<repo>/blobs/<hash>``, and links ``<repo>/snapshots/<rev>/<file>`` to
    ``../../blobs/<hash>``; a link to another repository's blobs, or anywhere else, is not this."""
    snap = Path(os.path.realpath(directory))
    repo = snap.parent.parent
    return (snap.parent.name == "snapshots" and repo.name.startswith(HUB_REPO_PREFIXES)
            and real.parent == Path(os.path.realpath(repo / "blobs")))


def member(directory: Path, name: str) -> tuple[Path, os.stat_result]:
    """The path to read for file ``name`` of a checkpoint directory, and its stat; nothing is opened.

    A symbolic link is followed only when its target lies inside the (resolved) directory, so a symlinked
    checkpoint directory, or a link from one file of it to another, is fine, and a link that leaves it is an
    ``OutsideCheckpointError`` — except the Hugging Face cache's own layout: a link from ``snapshots/<rev>/`` to a
    blob of the same repository (:func:`hub_blob`). The file must be regular (``NotRegularFileError`` for a FIFO, a
    device, a socket: reading one could block forever or never end); a missing file is a ``PartitionSizeError``."""
    path = Path(directory) / name
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            real = Path(os.path.realpath(path))
            root = Path(os.path.realpath(directory))
            if root not in real.parents and not hub_blob(directory, real):
                raise OutsideCheckpointError(f"{path} is a symbolic link to {real}, outside the checkpoint directory "
                                             f"{root} (and not a blob of its Hugging Face cache repository): refused "
                                             "(copy the file into the directory instead)", path=path, entry=name)
            path, st = real, os.stat(real)
    except FileNotFoundError as exc:
        raise PartitionSizeError(f"{path} is missing (or a dangling link)", path=path, entry=name) from exc
    except OSError as exc:  # a link loop, a permission problem
        raise UnsafeFileError(f"{path}: {exc.strerror}", path=path, entry=name) from exc
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{path} is {_kind(st.st_mode)}, not a regular file: refused (reading it could "
                                  "block forever or never end)", path=path, entry=name)
    return path, st


def open_regular(path: Path, flags: int = 0) -> int:
    """``os.open`` for reading a checkpoint file that ``member`` checked: never follows a final symbolic link, never
    blocks on a FIFO swapped in since, and refuses anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | flags)
    except OSError as exc:
        raise UnsafeFileError(f"{path}: {exc.strerror} (was it replaced by a link while loading?)", path=path) \
            from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFileError(f"{path} is {_kind(mode)}, not a regular file: refused", path=path)
    os.set_blocking(fd, True)  # O_NONBLOCK was for the open only: reads of the regular file stay ordinary
    return fd


def read_member(directory: Path, name: str,
                max_bytes: int = MAX_INDEX_BYTES) -> tuple[bytes, Path, os.stat_result]:
    """A small file of a checkpoint (an index) checked by ``member``, read whole if it has at most ``max_bytes``:
    its bytes, the path read and its stat."""
    path, st = member(directory, name)
    if st.st_size > max_bytes:
        raise IndexTooLargeError(f"{path} has {st.st_size} bytes, more than loader.max_index_bytes={max_bytes}; "
                                 "raise it if the index is genuine", path=path, entry=name)
    fd = open_regular(path)
    try:
        chunks, total = [], 0
        while total <= max_bytes:
            data = os.read(fd, max_bytes + 1 - total)
            if not data:
                break
            chunks.append(data)
            total += len(data)
    finally:
        os.close(fd)
    if total > max_bytes:  # it grew since the stat
        raise IndexTooLargeError(f"{path} has more than loader.max_index_bytes={max_bytes} bytes", path=path,
                                 entry=name)
    return b"".join(chunks), path, st


def index_file(directory: Path, max_bytes: int = MAX_INDEX_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes and stat of a native checkpoint's index (checked like every file of it, capped at ``max_bytes``)."""
    path = Path(directory) / INDEX
    if not os.path.lexists(path):
        raise PartitionSizeError(f"{path} not found: not a native checkpoint directory (convert one with "
                                 "`coldstart-convert SRC DST`)", path=path)
    raw, _, st = read_member(directory, INDEX, max_bytes)
    return raw, st


def read_index(directory: Path, max_bytes: int = MAX_INDEX_BYTES) -> NativeIndex:
    return parse_index(index_file(directory, max_bytes)[0], str(Path(directory) / INDEX))


def check_partitions(directory: Path, index: NativeIndex) -> list[tuple[Path, os.stat_result]]:
    """Every partition file is a regular file inside the directory with exactly the indexed size; the paths to
    read them at, with their stats."""
    paths = []
    for p in index.partitions:
        path, st = member(directory, p.name)
        if st.st_size != p.size:
            raise PartitionSizeError(f"partition {path} has {st.st_size} bytes, the index says {p.size} "
                                     f"({'truncated' if st.st_size < p.size else 'too long'}); re-convert the "
                                     "checkpoint", path=path, entry=p.name)
        paths.append((path, st))
    return paths


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-n // alignment) * alignment
