"""The read pipeline: reader threads pread large chunks into one destination buffer, directly or through a ring.

``direct`` mode (CPU): each chunk is read straight into its place in the destination (one copy, kernel → user).
A destination of fresh memory is faulted in by a prefault thread that runs ahead of the readers (``prefault``): on
the 2-core CI VM a fresh page's first touch costs about as much as reading it from the disk (0.6–1.0 s per 2.6 GB
of 4 KiB pages, 2.3–6.7 s of 2 MiB ones), and paid inside each reader's ``pread`` it stalls that reader's next
request; paid by a thread of its own it overlaps the disk.
``ring`` mode (CUDA, and CPU tests of the same logic): each reader owns a few staging buffers; it reads a chunk
into one, starts an asynchronous copy to the destination on its own stream, and reuses the buffer only after that
copy's event completed, so memory stays bounded by the ring however large the model.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import xxhash

from loaders.native.format import ALIGNMENT, ChunkChecksumError, open_regular

S = TypeVar("S")

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux ≥ 5.14 uapi value; Python 3.11 lacks the name
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE


def parallel_for(count: int, threads: int, work: Callable[[int, S], None], state: Callable[[], S],
                 name: str = "coldstart-worker") -> None:
    """Run ``work(i, st)`` for every ``i < count`` on ``threads`` threads, each with its own ``st = state()`` (a
    reused buffer, say), items handed out in order; the first error stops the others and is re-raised."""
    items = iter(range(count))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            st = state()
            while not errors:
                with lock:
                    i = next(items, None)
                if i is None:
                    return
                work(i, st)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, name=f"{name}-{w}") for w in range(max(1, min(threads, count or 1)))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class Segment:
    """Copy ``length`` bytes of ``path`` at ``file_offset`` to ``dest_offset``; ``digest`` checks them if set."""

    path: Path
    file_offset: int
    length: int
    dest_offset: int
    digest: str | None = None
    label: str = ""


@dataclass
class PipelineStats:
    read_s: float = 0.0  # summed over threads: time inside pread
    copy_s: float = 0.0  # summed over threads: time issuing/doing staging → destination copies
    wait_s: float = 0.0  # summed over threads: time waiting for a staging buffer to come back
    verify_s: float = 0.0
    fault_s: float = 0.0  # the prefault thread's time faulting in destination pages (first touch of fresh memory)
    faulted_bytes: int = 0  # destination bytes the prefault thread faulted in before a reader reached them
    bytes_read: int = 0
    max_in_flight: int = 0
    direct_io: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class CopyEngine(Protocol):
    """Asynchronous staging-buffer → destination copies (CUDA streams, or threads in CPU tests)."""

    def make_buffer(self, nbytes: int) -> torch.Tensor: ...

    def copy_async(self, worker: int, dest: torch.Tensor, src: torch.Tensor) -> Any: ...

    def wait(self, handle: Any) -> None: ...

    def finish(self) -> None: ...


class CudaCopyEngine:
    """Pinned staging buffers; ``non_blocking`` copies on one CUDA stream per reader; events for reuse."""

    def __init__(self, device: torch.device, streams: int) -> None:
        self.device = device
        self.streams = [torch.cuda.Stream(device=device) for _ in range(max(1, streams))]

    def make_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def copy_async(self, worker: int, dest: torch.Tensor, src: torch.Tensor) -> Any:
        stream = self.streams[worker % len(self.streams)]
        with torch.cuda.stream(stream):
            dest.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return event

    def wait(self, handle: Any) -> None:
        handle.synchronize()

    def finish(self) -> None:
        for s in self.streams:
            s.synchronize()


class ThreadCopyEngine:
    """The same contract on CPU: copies run on a separate thread pool (exercises the ring logic without a GPU)."""

    def __init__(self, workers: int = 2) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="coldstart-copy")

    def make_buffer(self, nbytes: int) -> torch.Tensor:
        return aligned_empty(nbytes)

    def copy_async(self, worker: int, dest: torch.Tensor, src: torch.Tensor) -> Future[torch.Tensor]:
        return self.pool.submit(dest.copy_, src)

    def wait(self, handle: Any) -> None:
        handle.result()

    def finish(self) -> None:
        self.pool.shutdown(wait=True)


def aligned_empty(nbytes: int, huge: bool = False) -> torch.Tensor:
    """A page-aligned uint8 CPU tensor backed by a fresh anonymous mapping; ``huge`` asks for transparent huge pages.

    Huge pages are not the default: their first touch zeroes 2 MiB at a time, which on the 2-core CI VM (a nested
    guest whose host backs never-touched memory lazily) ran at 0.4–1.2 GB/s against 2.5–4.3 GB/s for 4 KiB pages,
    and made O_DIRECT loads into a fresh buffer 0.14 of the disk's ceiling. ``loaders.native.probe`` measures
    which kind is faster on the machine at hand."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            mm.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(mm, dtype=torch.uint8)  # the tensor keeps the mapping alive


def populate_write(t: torch.Tensor, start: int = 0, length: int | None = None) -> bool:
    """Fault in ``t``'s bytes [start, start + length) for writing (``MADV_POPULATE_WRITE``; CPU tensors only);
    False where the kernel has no such advice (before 5.14): the caller's first writes fault them instead."""
    length = t.numel() * t.element_size() - start if length is None else length
    addr = t.data_ptr() + start
    begin = addr - addr % PAGE
    if length <= 0:
        return True
    return _libc.madvise(ctypes.c_void_p(begin), length + (addr - begin), MADV_POPULATE_WRITE) == 0


def as_memoryview(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU uint8 tensor (no copy)."""
    return memoryview(t.numpy())  # type: ignore[arg-type]


def _open(path: Path, direct: bool, cache: dict[tuple[Path, bool], int], lock: threading.Lock) -> int:
    key = (path, direct)
    with lock:
        fd = cache.get(key)
        if fd is None:
            fd = cache[key] = open_regular(path, os.O_DIRECT if direct else 0)
        return fd


def _pread_full(fd: int, view: memoryview, offset: int, want: int, direct: bool, path: Path) -> None:
    done = 0
    while done < want:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            from loaders.native.format import PartitionSizeError

            raise PartitionSizeError(f"{path}: unexpected end of file at byte {offset + done} (wanted {want} bytes "
                                     f"from {offset}); the file is truncated")
        done += n
        if direct and n % ALIGNMENT and done < want:
            break  # O_DIRECT short read past EOF: the caller sized the request, anything else is truncation


def verify_segment(view: memoryview, seg: Segment) -> None:
    """Raise ``ChunkChecksumError`` naming the chunk when ``view`` does not match the segment's digest."""
    if seg.digest is not None and xxhash.xxh3_64_hexdigest(view) != seg.digest:
        raise ChunkChecksumError(f"{seg.label or seg.path}: bytes [{seg.file_offset}, {seg.file_offset + seg.length}) "
                                 f"of {seg.path.name} fail their checksum: the file is corrupted; re-convert or "
                                 "re-download the checkpoint")


def run_pipeline(segments: Sequence[Segment], dest: torch.Tensor, threads: int, direct: bool,
                 engine: CopyEngine | None = None, ring_buffers: int = 0,
                 on_segment: Callable[[Segment, memoryview], None] | None = None,
                 fetch: Callable[[Segment, memoryview], None] | None = None, prefault: bool = False,
                 buffers: Sequence[torch.Tensor] | None = None) -> PipelineStats:
    """Fill ``dest`` (a flat uint8 tensor) from the segments with ``threads`` readers.

    Without ``engine`` the readers pread straight into ``dest`` (which must be a CPU tensor); ``prefault`` (fresh
    memory) adds a thread that faults the destination in ahead of them, segment by segment in their order,
    skipping to the readers' position whenever they catch up. With an engine, ``ring_buffers`` staging buffers
    (≥ 1 per reader) of the largest segment size are reused round-robin; ``buffers`` hands in ones kept from an
    earlier load (a pool worker's arena: pinned once, never again).
    ``on_segment`` sees each segment's verified bytes (used to write a tier through while loading).
    ``fetch`` replaces the local pread: it fills the view with the segment's bytes (the remote tier's range reads).
    """
    stats = PipelineStats(direct_io=direct)
    threads = max(1, min(threads, len(segments) or 1))
    fds: dict[tuple[Path, bool], int] = {}
    lock = threading.Lock()
    next_item = iter(range(len(segments)))
    errors: list[BaseException] = []
    seg_max = max((s.length for s in segments), default=0)
    per_thread = max(1, ring_buffers // threads) if engine is not None else 0
    if buffers is not None:
        per_thread = max(1, len(buffers) // threads)
    in_flight = [0]
    claimed = [0]  # segments the readers have taken (the prefault thread stays ahead of this)

    def reader(worker: int) -> None:
        bufs: list[torch.Tensor] = []
        pending: list[Any] = []
        if engine is not None:
            if buffers is not None:
                bufs = list(buffers[worker * per_thread : (worker + 1) * per_thread])
            else:
                bufs = [engine.make_buffer(-(-seg_max // ALIGNMENT) * ALIGNMENT) for _ in range(per_thread)]
            pending = [None] * per_thread
        k = 0
        try:
            while not errors:
                with lock:
                    i = next(next_item, None)
                    if i is not None:
                        claimed[0] = i + 1
                if i is None:
                    break
                seg = segments[i]
                use_direct = (direct and fetch is None and seg.file_offset % ALIGNMENT == 0
                              and seg.length % ALIGNMENT == 0 and seg.dest_offset % ALIGNMENT == 0)
                fd = -1 if fetch is not None else _open(seg.path, use_direct, fds, lock)
                if engine is None:
                    view = as_memoryview(dest[seg.dest_offset : seg.dest_offset + seg.length])
                else:
                    slot = k % per_thread
                    k += 1
                    if pending[slot] is not None:
                        t0 = time.perf_counter()
                        engine.wait(pending[slot])
                        with lock:
                            in_flight[0] -= 1
                        stats.add(wait_s=time.perf_counter() - t0)
                    view = as_memoryview(bufs[slot][: seg.length])
                t0 = time.perf_counter()
                if fetch is not None:
                    fetch(seg, view)
                else:
                    _pread_full(fd, view, seg.file_offset, seg.length, use_direct, seg.path)
                t1 = time.perf_counter()
                verify_segment(view, seg)
                if on_segment is not None:
                    on_segment(seg, view)
                t2 = time.perf_counter()
                stats.add(read_s=t1 - t0, verify_s=t2 - t1, bytes_read=seg.length)
                if engine is not None:
                    pending[slot] = engine.copy_async(worker, dest[seg.dest_offset : seg.dest_offset + seg.length],
                                                      bufs[slot][: seg.length])
                    with lock:
                        in_flight[0] += 1
                        stats.max_in_flight = max(stats.max_in_flight, in_flight[0])
                    stats.add(copy_s=time.perf_counter() - t2)
            for handle in pending:
                if handle is not None:
                    engine.wait(handle)  # type: ignore[union-attr]
        except BaseException as exc:
            errors.append(exc)

    def prefaulter() -> None:
        """Fault the destination in ahead of the readers (their first touch of fresh memory is then not theirs)."""
        j = 0
        try:
            while not errors:
                with lock:
                    j = max(j, claimed[0])
                if j >= len(segments):
                    return
                seg = segments[j]
                t0 = time.perf_counter()
                if not populate_write(dest, seg.dest_offset, seg.length):
                    return  # no MADV_POPULATE_WRITE: the readers fault their pages themselves
                stats.add(fault_s=time.perf_counter() - t0, faulted_bytes=seg.length)
                j += 1
        except BaseException as exc:
            errors.append(exc)

    try:
        workers = [threading.Thread(target=reader, args=(w,), name=f"coldstart-read-{w}") for w in range(threads)]
        if prefault and engine is None and dest.device.type == "cpu" and segments:
            workers.append(threading.Thread(target=prefaulter, name="coldstart-prefault"))
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if engine is not None:
            engine.finish()
    finally:
        for fd in fds.values():
            os.close(fd)
    if errors:
        raise errors[0]
    return stats
