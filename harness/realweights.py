"""A real model's tensors as its files hold them: names, dtypes and shapes from the file headers, bytes streamed in
bounded memory (for the manifest's checksums and for conversions), never the whole model in RAM.

safetensors files are read with ``pread`` at the offsets of their (validated) headers; ``.bin`` files are opened with
``torch.load(weights_only=True, mmap=True)`` (a pickle that needs anything but tensors is refused with torch's
reason) and each tensor's mapped pages are dropped from this process once it has been read, so the resident set
stays about one tensor, not the file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import pickle
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash
from tqdm import tqdm

from harness.sources import ModelSource, ModelSourceError
from loaders.native.convert import read_safetensors_header
from loaders.native.format import DTYPE_NAMES, DuplicateTensorError, open_regular

READ_BYTES = 16 << 20  # one pread / one hashed piece: the bound on a reader's buffer
PAGE = os.sysconf("SC_PAGE_SIZE")
MADV_DONTNEED = 4
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class UnsafePickleError(ModelSourceError):
    """A ``.bin`` file is a pickle that ``torch.load(weights_only=True)`` refuses (it needs more than tensors)."""


class WeightsIndexMismatchError(ModelSourceError):
    """A weight index names tensors the files do not hold, or the files hold tensors it does not name."""


@dataclass(frozen=True)
class TensorRecord:
    """One tensor as stored: its file, and for safetensors its byte range in that file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: str
    offset: int | None  # safetensors: absolute offset of the bytes; .bin: None (read through torch.load's mapping)
    nbytes: int


def _load_bin(path: Path, mmap: bool = True) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a ``.bin``; a pickle that needs more is an ``UnsafePickleError``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"{path}: refused by torch.load(weights_only=True), so no code in it runs: "
                                f"{_pickle_reason(str(exc))} — re-save the weights as safetensors with the library "
                                "that wrote them") from None
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # a legacy (pre-zip) torch file cannot be mapped: read it whole
            return _load_bin(path, mmap=False)
        raise
    if not isinstance(obj, dict):
        raise UnsafePickleError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def _pickle_reason(message: str) -> str:
    """The part of torch's refusal that names what the pickle needs (``Unsupported global: GLOBAL mod.Class``),
    without its advice on how to run it anyway and without terminal colour codes."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", message).split())
    found = re.search(r"Unsupported global: GLOBAL \S+", text) or re.search(r"WeightsUnpickler error: [^.]+", text)
    return found.group(0) if found else text[:300]


def read_records(source: ModelSource) -> list[TensorRecord]:
    """Every tensor of the source's weight files, in file order (safetensors headers validated before use)."""
    out: list[TensorRecord] = []
    seen: dict[str, str] = {}
    for name in source.weights:
        path, _ = source.resolved(name)
        if source.format == "safetensors":
            _, tensors = read_safetensors_header(path)
            recs = [TensorRecord(t.name, t.dtype, t.shape, name, t.offset, t.nbytes) for t in tensors]
        else:
            state = _load_bin(path)
            recs = [TensorRecord(k, v.dtype, tuple(v.shape), name, None, v.numel() * v.element_size())
                    for k, v in state.items() if isinstance(v, torch.Tensor)]
            del state
        for r in recs:
            if r.name in seen:
                raise DuplicateTensorError(f"{source.path}: tensor {r.name!r} is in {seen[r.name]} and in {name}: "
                                           "which one is meant cannot be told", path=path, entry=r.name)
            seen[r.name] = name
        out.extend(recs)
    if source.index:
        _check_index(source, seen)
    return out


def _check_index(source: ModelSource, stored: dict[str, str]) -> None:
    raw = source.resolved(source.index or "")[0].read_bytes()
    weight_map: dict[str, str] = json.loads(raw)["weight_map"]
    wrong = sorted(n for n, f in weight_map.items() if stored.get(n) != f)
    unnamed = sorted(set(stored) - set(weight_map))
    if wrong or unnamed:
        raise WeightsIndexMismatchError(f"{source.path / str(source.index)} disagrees with the weight files: "
                                        f"{len(wrong)} tensor(s) it maps to a file that lacks them {wrong[:5]}, "
                                        f"{len(unnamed)} stored tensor(s) it does not name {unnamed[:5]}")


def drop_range(address: int, nbytes: int) -> None:
    """Give the pages of a read-only file mapping's range back (``MADV_DONTNEED``): they stay in the page cache, not
    in this process (a later access faults them in again from the cache)."""
    start = address & ~(PAGE - 1)
    end = address + nbytes
    if end > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


def drop_pages(t: torch.Tensor) -> None:
    """:func:`drop_range` over a file-mapped tensor's whole storage."""
    storage = t.untyped_storage()
    drop_range(storage.data_ptr(), storage.nbytes())


class WeightReader:
    """Streams the bytes of a source's tensors; one reader per thread (each keeps its own descriptors)."""

    def __init__(self, source: ModelSource, read_bytes: int = READ_BYTES) -> None:
        self.source = source
        self.read_bytes = max(PAGE, read_bytes - read_bytes % 8)
        self._fds: dict[str, int] = {}
        self._bin: tuple[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _fd(self, file: str) -> int:
        if file not in self._fds:
            self._fds[file] = open_regular(self.source.resolved(file)[0])
        return self._fds[file]

    def _bin_tensor(self, rec: TensorRecord) -> torch.Tensor:
        with self._lock:
            if self._bin is None or self._bin[0] != rec.file:
                self._bin = None  # one .bin mapping at a time
                self._bin = (rec.file, _load_bin(self.source.resolved(rec.file)[0]))
            t = self._bin[1][rec.name]
        assert isinstance(t, torch.Tensor)
        return t

    def pieces(self, rec: TensorRecord, buffer: bytearray | None = None) -> Iterator[memoryview]:
        """The tensor's bytes in order, at most ``read_bytes`` at a time (into ``buffer`` when given: each piece is
        valid until the next one is asked for)."""
        if rec.offset is None:
            t = self._bin_tensor(rec)
            flat = t.contiguous().reshape(-1).view(torch.uint8) if rec.nbytes else torch.empty(0, dtype=torch.uint8)
            mapped = flat.data_ptr() == t.data_ptr()  # a view of the file's mapping (not a contiguous copy)
            view = memoryview(flat.numpy())  # type: ignore[arg-type]
            try:
                for start in range(0, rec.nbytes, self.read_bytes):
                    yield view[start : start + self.read_bytes]
                    if mapped:  # the consumer is done with this piece: its pages leave the resident set now
                        drop_range(flat.data_ptr() + start, min(self.read_bytes, rec.nbytes - start))
            finally:
                del view
                drop_pages(t)
            return
        fd = self._fd(rec.file)
        for start in range(0, rec.nbytes, self.read_bytes):
            n = min(self.read_bytes, rec.nbytes - start)
            buf = buffer if buffer is not None and len(buffer) >= n else bytearray(n)
            view = memoryview(buf)[:n]
            got = 0
            while got < n:
                k = os.preadv(fd, [view[got:]], rec.offset + start + got)
                if k == 0:
                    raise ModelSourceError(f"{self.source.path / rec.file}: ends before tensor {rec.name!r} "
                                           "(truncated while reading?)")
                got += k
            yield view

    def chunks(self, rec: TensorRecord, dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
        """The tensor's values as consecutive flat pieces (each its own memory), cast to ``dtype`` if given."""
        for piece in self.pieces(rec):
            # a safetensors piece owns its buffer; a .bin piece views the file's mapping, whose pages go after
            t = torch.frombuffer(piece if rec.offset is not None else bytearray(piece), dtype=torch.uint8)
            t = t.view(rec.dtype)
            yield t.to(dtype) if dtype is not None and dtype != rec.dtype else t

    def tensor(self, rec: TensorRecord, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole tensor (filled piece by piece: peak memory is the tensor plus one piece)."""
        out = torch.empty(rec.shape, dtype=dtype or rec.dtype)
        flat = out.reshape(-1)
        at = 0
        for c in self.chunks(rec, dtype):
            flat[at : at + c.numel()].copy_(c)
            at += c.numel()
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._bin = None

    def __enter__(self) -> WeightReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hash_records(source: ModelSource, records: list[TensorRecord], threads: int = 2,
                 progress: bool = True) -> tuple[dict[str, str], dict[str, float]]:
    """xxh3-64 of every tensor's bytes (as ``tensor_digest`` computes it for a loaded tensor), streamed: ``threads``
    readers, each with one buffer of ``READ_BYTES``. Returns the digests and the timing (seconds, bytes)."""
    total = sum(r.nbytes for r in records)
    digests: dict[str, str] = {}
    order = sorted(records, key=lambda r: (r.file, r.offset or 0))
    t0 = time.perf_counter()
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
              desc=f"manifest of {source.path.name}") as bar:
        bar_lock = threading.Lock()

        def work(part: list[TensorRecord]) -> None:
            buf = bytearray(READ_BYTES)
            with WeightReader(source) as reader:
                for rec in part:
                    h = xxhash.xxh3_64()
                    for piece in reader.pieces(rec, buf):
                        h.update(piece)
                        with bar_lock:
                            bar.update(len(piece))
                    digests[rec.name] = h.hexdigest()

        n = max(1, min(threads, len(order)))
        if source.format == "torch_bin":  # one mapping of one file at a time: a single reader
            n = 1
        parts: list[list[TensorRecord]] = [[] for _ in range(n)]
        loads = [0] * n
        for rec in sorted(order, key=lambda r: -r.nbytes):  # balance bytes over the readers
            k = loads.index(min(loads))
            parts[k].append(rec)
            loads[k] += rec.nbytes
        for p in parts:
            p.sort(key=lambda r: (r.file, r.offset or 0))  # each reader goes through its files in order
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(work, parts))
    seconds = time.perf_counter() - t0
    return digests, {"hash_s": seconds, "hash_bytes": float(total), "hash_threads": float(n)}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write ``doc`` to ``path`` through a temp file in the same directory, fsynced and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
