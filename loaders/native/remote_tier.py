"""Fetching a remote checkpoint: its small metadata files first, then a local skeleton the pipeline fills.

The skeleton is a hidden temp directory beside the SSD tier's entries: metadata files written whole, every data
file created at its remote size with its blocks reserved where the file system can (``posix_fallocate``: a full
disk fails up front, and writes into reserved extents are cheaper), safetensors headers fetched so the plan can be
made locally. On CPU each chunk is range-read into a reused buffer, verified and written into the skeleton
(``receive_into_files``); the files' page-cache pages, mapped privately afterwards, are the loaded tensors, so the
SSD-tier copy costs no second model-sized buffer. On CUDA the pipeline reads into the pinned ring, copies to the
device and writes the same bytes into the skeleton. The loader renames the skeleton into the SSD tier only after
every byte arrived and was verified, so no partial entry is ever visible.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from loaders.native.format import (
    INDEX,
    MAX_INDEX_BYTES,
    NativeIndex,
    PartitionSizeError,
    UnsafePartitionNameError,
    parse_index,
)
from loaders.native.pipeline import PipelineStats, Segment, parallel_for, verify_segment
from loaders.native.remote import RemoteDirectory, RemoteError, RemoteNotFoundError, RemoteShortReadError
from loaders.native.sllm import DATA_PREFIX, SLLM_INDEX

MANIFEST = "coldstart_manifest.json"
ST_INDEX = "model.safetensors.index.json"
METADATA = (INDEX, SLLM_INDEX, ST_INDEX, MANIFEST, "config.json")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_SLLM_FILES = 10_000


class RemoteIndexError(RemoteError):
    """The remote directory's metadata is unusable (no known index, unsafe file names, bad JSON)."""


def _safe(name: object, url: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise UnsafePartitionNameError(f"{url}: file name {name!r} is not a plain file name (refused)")
    return name


def _data_names(remote: RemoteDirectory, meta: dict[str, bytes]) -> list[str]:
    url = remote.url
    try:
        if INDEX in meta:
            return [p.name for p in _native(remote, meta).partitions]
        if MANIFEST in meta:
            return [_safe(n, url) for n in json.loads(meta[MANIFEST])["files"]]
        if ST_INDEX in meta:
            return sorted({_safe(n, url) for n in json.loads(meta[ST_INDEX])["weight_map"].values()})
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteIndexError(f"{url}: unreadable checkpoint metadata: {exc}") from exc
    if SLLM_INDEX in meta:
        names: list[str] = []
        while remote.exists(f"{DATA_PREFIX}{len(names)}") and len(names) < MAX_SLLM_FILES:
            names.append(f"{DATA_PREFIX}{len(names)}")
        return names
    if remote.exists("model.safetensors"):
        return ["model.safetensors"]
    raise RemoteNotFoundError(f"{url}: no checkpoint there (none of {', '.join(METADATA)} nor model.safetensors); "
                              "check the URL")


def _native(remote: RemoteDirectory, meta: dict[str, bytes]) -> NativeIndex:
    return parse_index(meta[INDEX], f"{remote.url}/{INDEX}")


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write every byte (a seam the tests use to simulate a full disk)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def write_through(fd: int, direct_fd: int | None, data: memoryview, offset: int) -> None:
    """Write a chunk into its SSD-tier file: with O_DIRECT (``direct_fd``) the 4 KiB-aligned part when the chunk's
    memory, offset and length allow it, bypassing the page cache; the rest (a file's tail) through ``fd``."""
    aligned = len(data) - len(data) % 4096
    address = ctypes.addressof(ctypes.c_char.from_buffer(data)) if direct_fd is not None and aligned else 0
    if direct_fd is not None and aligned and address % 4096 == 0 and offset % 4096 == 0:
        pwrite_all(direct_fd, data[:aligned], offset)
        if aligned < len(data):
            pwrite_all(fd, data[aligned:], offset + aligned)
        return
    pwrite_all(fd, data, offset)


def _reserve(fd: int, size: int) -> bool:
    """Allocate the file's blocks now; False where the file system cannot (the writes then allocate them).

    A seam the tests use to simulate a full disk."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True


def make_skeleton(remote: RemoteDirectory, tmp: Path, max_index_bytes: int = MAX_INDEX_BYTES) -> list[Path]:
    """Fetch metadata into ``tmp`` (each file at most ``max_index_bytes``), create its data files at their remote
    sizes (blocks reserved where the file system can; a native partition whose remote size differs from its index
    is refused first); return the data files."""
    meta: dict[str, bytes] = {}
    for name in METADATA:
        try:
            meta[name] = remote.get(name, max_index_bytes)
        except RemoteNotFoundError:
            continue
    names = _data_names(remote, meta)
    indexed = {p.name: p.size for p in _native(remote, meta).partitions} if INDEX in meta else {}
    for name, data in meta.items():
        (tmp / name).write_bytes(data)
    files = []
    for name in names:
        size = remote.size(name)
        if name in indexed and size != indexed[name]:
            raise PartitionSizeError(f"{remote.url}/{name} has {size} bytes, the index says {indexed[name]} "
                                     f"({'truncated' if size < indexed[name] else 'too long'}); re-publish the "
                                     "checkpoint", path=f"{remote.url}/{name}", entry=name)
        path = tmp / name
        with open(path, "wb") as f:
            f.truncate(size)
            if size:
                _reserve(f.fileno(), size)
            if name.endswith(".safetensors"):  # the plan reads the header locally
                head = bytearray(8)
                remote.read_into(name, 0, memoryview(head))
                (n,) = struct.unpack("<Q", head)
                if n > min(size - 8, max_index_bytes):
                    raise RemoteShortReadError(f"{remote.url}/{name}: header length {n} exceeds the file ({size})")
                header = bytearray(n)
                remote.read_into(name, 8, memoryview(header))
                f.write(head + header)
        files.append(path)
    return files


def receive_into_files(segments: Sequence[Segment], fetch: Callable[[Segment, memoryview], None],
                       threads: int) -> PipelineStats:
    """Fetch every segment into a reused per-thread buffer, verify it there, and pwrite it into its skeleton file.

    The CPU path: the SSD-tier files' pages then *are* the checkpoint in memory (the loader maps them privately),
    so no destination buffer of the model's size is allocated and filled besides them. ``fetch(seg, view)``
    fills ``view`` with the segment's bytes. (Receiving straight into shared mappings of the files was slower on
    ext4: one page fault per 4 KiB, each reserving its block, against pwrite's batched page-cache writes.)
    """
    stats = PipelineStats()
    fds = {path: os.open(path, os.O_WRONLY) for path in dict.fromkeys(s.path for s in segments)}
    seg_max = max((s.length for s in segments), default=0)

    def work(i: int, buf: memoryview) -> None:
        seg = segments[i]
        view = buf[: seg.length]
        t0 = time.perf_counter()
        fetch(seg, view)
        t1 = time.perf_counter()
        verify_segment(view, seg)
        t2 = time.perf_counter()
        pwrite_all(fds[seg.path], view, seg.file_offset)
        stats.add(read_s=t1 - t0, verify_s=t2 - t1, copy_s=time.perf_counter() - t2, bytes_read=seg.length)

    try:
        parallel_for(len(segments), threads, work, lambda: memoryview(bytearray(seg_max)), "coldstart-fetch")
    finally:
        for fd in fds.values():
            os.close(fd)
    return stats


def sync_then(files: list[Path], directory: Path, then: Callable[[], None]) -> threading.Thread:
    """fsync ``files`` and ``directory`` in the background, then call ``then`` (e.g. mark the entry verified).

    For entries whose chunks carry checksums: they are published before their pages reach the disk, and only
    marked verified once they have, so an entry cut short by a power loss is re-verified on its next load."""
    def run() -> None:
        with contextlib.suppress(OSError):
            for path in [*files, directory]:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            then()

    thread = threading.Thread(target=run, name="coldstart-ssd-sync", daemon=True)
    thread.start()
    return thread


def publish(tmp: Path, dst: Path, files: list[Path], sync: bool = True) -> Path:
    """fsync the skeleton (unless ``sync=False``: see ``sync_then``) and rename it into place (a concurrent
    fetch that finished first wins)."""
    for path in [*files, *(p for p in tmp.iterdir() if p.is_file() and p not in files)] if sync else []:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        tmp.rename(dst)
    except OSError:
        if not dst.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if sync:
        fd = os.open(dst.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return dst
