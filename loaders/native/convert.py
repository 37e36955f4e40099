"""Convert safetensors directories, torch files or a state dict into the native format: streaming, atomic.

    coldstart-convert SRC DST [--partition-bytes N] [--chunk-bytes N]

Tensor bytes are copied as file ranges through one small buffer (safetensors) or one shard at a time (torch
files), so memory stays bounded whatever the model size. The output is written into a hidden temp directory,
fsynced and renamed into place: a crash, a full disk or a SIGKILL never leaves a visible partial checkpoint.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import xxhash
from tqdm import tqdm

from loaders.native.format import (
    ALIGNMENT,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_PARTITION_BYTES,
    DTYPE_NAMES,
    DTYPES,
    INDEX,
    MAX_INDEX_BYTES,
    Extent,
    IndexError_,
    NativeFormatError,
    NativeIndex,
    Partition,
    TensorEntry,
    UnknownDtypeError,
    align_up,
    check_extents,
    load_json,
    open_regular,
    read_index,
)

ST_CODES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8", "I32": "int32",
            "I64": "int64", "BOOL": "bool", "F64": "float64", "I16": "int16"}
COPY_BUFFER = 8 << 20


class ConversionError(NativeFormatError):
    """Conversion failed (unreadable source, full disk); nothing partial is left visible."""


@dataclass(frozen=True)
class TensorSource:
    """One tensor to copy: either a byte range of a file or an in-memory tensor."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    path: Path | None = None
    offset: int = 0
    tensor: torch.Tensor | None = None
    chunks: Iterable[torch.Tensor] | None = None  # consecutive pieces of the tensor (streamed writers)


class SafetensorsHeaderError(IndexError_):
    """A safetensors file's header is malformed (length, JSON, or an entry's dtype, shape or data offsets)."""


@dataclass(frozen=True)
class StTensor:
    """One tensor of a safetensors header: ``nbytes`` at ``offset`` of the file (header included)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def _nonneg_ints(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def read_safetensors_header(path: Path, max_bytes: int = MAX_INDEX_BYTES) -> tuple[int, list[StTensor]]:
    """Read and validate a safetensors file's header: (bytes before the data, tensors sorted by offset).

    Every entry passes the shared ``check_extents`` (non-negative, in-file, exact-size, non-overlapping offsets;
    element counts below 2^63) before any tensor byte is read; every failure is a named ``NativeFormatError``."""
    where = str(path)
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        raw_len = os.pread(fd, 8, 0)
        if len(raw_len) != 8:
            raise SafetensorsHeaderError(f"{path}: not a safetensors file (shorter than its 8-byte header length)",
                                         path=where)
        (n,) = struct.unpack("<Q", raw_len)
        if n > min(max_bytes, size - 8):
            raise SafetensorsHeaderError(f"{path}: header length {n} exceeds the file ({size} bytes) or "
                                         f"loader.max_index_bytes={max_bytes}: truncated or not safetensors",
                                         path=where)
        raw = b""
        while len(raw) < n:
            more = os.pread(fd, n - len(raw), 8 + len(raw))
            if not more:
                raise SafetensorsHeaderError(f"{path}: the header is cut short (truncated)", path=where)
            raw += more
    finally:
        os.close(fd)
    header = load_json(raw, where, SafetensorsHeaderError)
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path}: the header must be a JSON object", path=where)
    base = 8 + n
    out, extents = [], []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        tw = f"{path}: tensor {name!r}"
        if not isinstance(meta, dict):
            raise SafetensorsHeaderError(f"{tw}: entry {meta!r} is not an object", path=where, entry=name)
        code: Any = meta.get("dtype")
        shape: Any = meta.get("shape")
        offsets: Any = meta.get("data_offsets")
        if not isinstance(code, str) or code not in ST_CODES:
            raise UnknownDtypeError(f"{tw} has dtype {code!r}, which the native format does not store; known: "
                                    f"{sorted(ST_CODES)}", path=where, entry=name)
        if not _nonneg_ints(shape) or not _nonneg_ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
            raise SafetensorsHeaderError(f"{tw}: shape {shape!r} and data_offsets {offsets!r} must be non-negative "
                                         "integers, with [start, end] and start ≤ end", path=where, entry=name)
        dtype = DTYPES[ST_CODES[code]]
        start, end = offsets
        extents.append(Extent(str(name), 0, start, end - start, tuple(shape), dtype.itemsize))
        out.append(StTensor(str(name), dtype, tuple(shape), base + start, end - start))
    check_extents(extents, [size - base], [f"the data of {path.name} ({size - base} bytes; truncated?)"], where)
    return base, sorted(out, key=lambda t: t.offset)


def _safetensors_sources(path: Path) -> Iterator[TensorSource]:
    path = path.resolve()  # a source the user named (a hub cache links its shards to blobs): its links are followed
    try:
        _, tensors = read_safetensors_header(path)
    except NativeFormatError as exc:
        raise ConversionError(str(exc), path=exc.path, entry=exc.entry) from exc
    for t in tensors:
        yield TensorSource(t.name, t.dtype, t.shape, t.nbytes, path, t.offset)


def _torch_sources(path: Path) -> Iterator[TensorSource]:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.contiguous()
        yield TensorSource(name, t.dtype, tuple(t.shape), t.numel() * t.element_size(), tensor=t)
    del state


def _dict_sources(state_dict: dict[str, torch.Tensor]) -> Iterator[TensorSource]:
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        yield TensorSource(name, t.dtype, tuple(t.shape), t.numel() * t.element_size(), tensor=t)


def iter_sources(src: Path | dict[str, torch.Tensor]) -> Iterator[TensorSource]:
    """Tensors of a safetensors file/directory, torch file/directory, or a state dict, one at a time."""
    if isinstance(src, dict):
        yield from _dict_sources(src)
        return
    src = Path(src)
    if src.is_file():
        files = [src]
    elif src.is_dir():
        files = sorted(src.glob("*.safetensors")) or sorted(src.glob("*.bin")) + sorted(src.glob("*.pt"))
    else:
        raise ConversionError(f"{src} does not exist")
    if not files:
        raise ConversionError(f"{src}: no .safetensors, .bin or .pt files to convert")
    for f in files:
        yield from (_safetensors_sources(f) if f.suffix == ".safetensors" else _torch_sources(f))


class PartitionWriter:
    """Appends aligned tensors to partition files, hashing fixed-size chunks of each file as bytes go by."""

    def __init__(self, directory: Path, partition_bytes: int, chunk_bytes: int, bar: tqdm) -> None:
        self.dir, self.partition_bytes, self.chunk_bytes, self.bar = directory, partition_bytes, chunk_bytes, bar
        self.partitions: list[Partition] = []
        self.tensors: list[TensorEntry] = []
        self._f: BinaryIO | None = None
        self._pos = 0
        self._chunks: list[str] = []
        self._hasher = xxhash.xxh3_64()
        self._in_chunk = 0
        self._buf = bytearray(COPY_BUFFER)

    def _open(self) -> None:
        self._f = open(self.dir / f"part-{len(self.partitions):05d}.bin", "wb")  # noqa: SIM115
        self._pos, self._chunks, self._in_chunk = 0, [], 0
        self._hasher.reset()

    def _emit(self, data: memoryview) -> None:
        assert self._f is not None
        self._f.write(data)
        self._pos += len(data)
        while len(data):
            take = min(len(data), self.chunk_bytes - self._in_chunk)
            self._hasher.update(data[:take])
            self._in_chunk += take
            data = data[take:]
            if self._in_chunk == self.chunk_bytes:
                self._chunks.append(self._hasher.hexdigest())
                self._hasher.reset()
                self._in_chunk = 0

    def _pad_to(self, target: int) -> None:
        while self._pos < target:
            n = min(target - self._pos, len(self._buf))
            self._emit(memoryview(bytes(n)))

    def _close(self) -> None:
        if self._f is None:
            return
        self._pad_to(align_up(self._pos))
        if self._in_chunk:
            self._chunks.append(self._hasher.hexdigest())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self.partitions.append(Partition(f"part-{len(self.partitions):05d}.bin", self._pos, tuple(self._chunks)))
        self._f = None

    def add(self, s: TensorSource) -> None:
        if s.dtype not in DTYPE_NAMES:
            raise ConversionError(f"tensor {s.name!r}: dtype {s.dtype} is not storable in the native format")
        start = align_up(self._pos) if self._f is not None else 0
        if self._f is None or (self._pos > 0 and start + s.nbytes > self.partition_bytes):
            self._close()
            self._open()
            start = 0
        self._pad_to(start)
        self.tensors.append(TensorEntry(s.name, s.dtype, s.shape, len(self.partitions), start, s.nbytes))
        if s.tensor is not None or s.chunks is not None:
            for piece in ([s.tensor] if s.tensor is not None else s.chunks or []):
                raw = piece.reshape(-1).view(torch.uint8).numpy()
                for i in range(0, len(raw), COPY_BUFFER):
                    self._emit(memoryview(raw[i : i + COPY_BUFFER]))  # type: ignore[arg-type]
                    self.bar.update(min(COPY_BUFFER, len(raw) - i))
        else:
            assert s.path is not None
            fd = os.open(s.path, os.O_RDONLY)
            try:
                done = 0
                view = memoryview(self._buf)
                while done < s.nbytes:
                    n = os.preadv(fd, [view[: min(COPY_BUFFER, s.nbytes - done)]], s.offset + done)
                    if n <= 0:
                        raise ConversionError(f"{s.path}: unexpected end of file in tensor {s.name!r}")
                    self._emit(view[:n])
                    done += n
                    self.bar.update(n)
            finally:
                os.close(fd)

    def finish(self, metadata: dict[str, Any]) -> NativeIndex:
        self._close()
        return NativeIndex(tuple(self.partitions), tuple(self.tensors), self.chunk_bytes, ALIGNMENT, metadata)


def _clean_stale_temps(parent: Path, name: str) -> None:
    """Remove temp directories of conversions whose process died (e.g. SIGKILL)."""
    for tmp in parent.glob(f".{name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def convert(src: Path | dict[str, torch.Tensor], dst: Path, partition_bytes: int = DEFAULT_PARTITION_BYTES,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = True,
            metadata: dict[str, Any] | None = None) -> NativeIndex:
    """Write ``src`` as a native checkpoint at ``dst`` (atomically). An existing valid ``dst`` is kept as is."""
    if partition_bytes < ALIGNMENT or chunk_bytes < ALIGNMENT or chunk_bytes % ALIGNMENT:
        raise ValueError(f"partition_bytes={partition_bytes} and chunk_bytes={chunk_bytes} must be ≥ {ALIGNMENT} "
                         f"and chunk_bytes a multiple of {ALIGNMENT}")
    dst = Path(dst)
    if (dst / INDEX).exists():
        return read_index(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(dst.parent, dst.name)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with tqdm(unit="B", unit_scale=True, disable=not progress, desc=f"converting → {dst.name}") as bar:
            writer = PartitionWriter(tmp, partition_bytes, chunk_bytes, bar)
            seen: set[str] = set()
            for s in iter_sources(src):
                if s.name in seen:
                    raise ConversionError(f"tensor {s.name!r} appears twice in {src}")
                seen.add(s.name)
                writer.add(s)
            index = writer.finish(dict(metadata or {}))
        (tmp / INDEX).write_text(json.dumps(index.to_json(), indent=1))
        for path in (tmp / INDEX, tmp):
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        try:
            tmp.rename(dst)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp)  # a concurrent conversion won the race; its result is complete
            return read_index(dst)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise ConversionError(f"no space left on device converting into {dst}; nothing was left behind") from exc
        raise
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coldstart-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="safetensors file/directory or torch .bin/.pt file/directory")
    parser.add_argument("dst", type=Path, help="output directory (created atomically)")
    parser.add_argument("--partition-bytes", type=int, default=DEFAULT_PARTITION_BYTES)
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        index = convert(args.src, args.dst, args.partition_bytes, args.chunk_bytes, progress=not args.quiet)
    except (NativeFormatError, ValueError) as exc:
        print(f"coldstart-convert: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dst}: {len(index.tensors)} tensors, {index.tensor_bytes / 1e9:.3f} GB in "
          f"{len(index.partitions)} partitions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
