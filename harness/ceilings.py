"""Hardware ceilings measured in the same run as the loads they bound: disk, page cache, DRAM, host→device.

The disk is measured twice: into reused memory (each reader thread's one buffer: the disk's own limit, what a process
whose destination is already faulted in — a pool worker's arena — can reach) and into fresh memory (every byte lands
in a page never touched before, as in a fresh process: on the 2-core CI VM that first touch costs about as much as
the read). A cold load's ``ceiling_fraction`` is against the one matching where its bytes landed
(``bounding_ceiling``'s ``memory``), and the trials table names it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loaders.pagecache import evict, warm

ALIGN = 4096


@dataclass(frozen=True)
class _Range:
    path: Path
    offset: int
    length: int


def _ranges(files: Sequence[Path], block_bytes: int, max_bytes: int) -> list[_Range]:
    out: list[_Range] = []
    total = 0
    for f in files:
        size = f.stat().st_size
        for off in range(0, size, block_bytes):
            if total >= max_bytes:
                return out
            n = min(block_bytes, size - off)
            out.append(_Range(f, off, n))
            total += n
    return out


def _reused_buffer(nbytes: int) -> mmap.mmap:
    """A reader's reused buffer: page-aligned (O_DIRECT needs it), on huge pages where the kernel gives them, and
    faulted in before any timing. Huge pages are physically contiguous, so an O_DIRECT request fills up to the
    device's request size with a few DMA segments; 4 KiB pages scattered in memory cut each request at the
    device's segment limit (254 × 4 KiB on the CI VM's virtio disk): there O_DIRECT into a 4 KiB-page arena read
    1.4–1.5 GB/s and into a huge-page one 2.1–2.2, so 4 KiB buffers would measure the disk below its limit."""
    buf = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            buf.madvise(mmap.MADV_HUGEPAGE)
    try:
        buf.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23))
    except OSError:
        buf.write(b"\0" * nbytes)
        buf.seek(0)
    return buf


def _parallel_read(ranges: list[_Range], threads: int, block_bytes: int, direct: bool,
                   fresh: bool = False) -> tuple[int, float]:
    """Read the ranges with ``threads`` workers (range i to worker i mod threads); return (bytes, seconds).

    ``fresh=False``: each worker reads every range into its one reused buffer. ``fresh=True``: every range lands in
    its own place of one new anonymous mapping of all the bytes (the system's default page size), so each read's
    pages are touched for the first time by that read, as a fresh process's destination is."""
    shares = [list(range(i, len(ranges), threads)) for i in range(threads)]
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    places, total_span = [], 0
    for r in ranges:
        places.append(total_span)
        total_span += -(-r.length // ALIGN) * ALIGN
    big = mmap.mmap(-1, max(total_span, ALIGN)) if fresh else None

    def work(share: list[int]) -> int:
        buf = big if big is not None else _reused_buffer(block_bytes)
        view = memoryview(buf)
        fds: dict[Path, int] = {}
        done = 0
        try:
            for i in share:
                r = ranges[i]
                fd = fds.get(r.path)
                if fd is None:
                    fd = fds[r.path] = os.open(r.path, flags)
                length = -(-r.length // ALIGN) * ALIGN if direct else r.length  # aligned length; EOF reads short
                start = places[i] if big is not None else 0
                done += min(os.preadv(fd, [view[start : start + length]], r.offset), r.length)
        finally:
            for fd in fds.values():
                os.close(fd)
            view.release()
            if big is None:
                buf.close()
        return done

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(pool.map(work, shares))
    elapsed = time.perf_counter() - t0
    if big is not None:
        big.close()
    return total, elapsed


def _best(fn: Callable[[], tuple[int, float]], repeats: int) -> dict[str, Any]:
    samples = [fn() for _ in range(repeats)]
    rates = [b / s / 1e9 for b, s in samples if s > 0]
    return {"gbps": max(rates), "samples_gbps": rates, "bytes": samples[0][0]}


def odirect_read(files: Sequence[Path], threads: int = 4, block_bytes: int = 16 << 20,
                 max_bytes: int = 1 << 30, repeats: int = 3, fresh: bool = False) -> dict[str, Any]:
    """Sequential O_DIRECT read bandwidth of the disk holding ``files`` (bypasses the page cache), into reused
    buffers or (``fresh``) into fresh memory."""
    ranges = _ranges(files, block_bytes, max_bytes)
    try:
        return _best(lambda: _parallel_read(ranges, threads, block_bytes, direct=True, fresh=fresh), repeats)
    except OSError as exc:  # e.g. tmpfs or overlay without O_DIRECT support
        return {"gbps": None, "error": f"O_DIRECT read failed: {exc}"}


def pagecache_read(files: Sequence[Path], threads: int = 4, block_bytes: int = 16 << 20,
                   max_bytes: int = 1 << 30, repeats: int = 3) -> dict[str, Any]:
    """Multi-threaded pread bandwidth from the page cache (files warmed first)."""
    ranges = _ranges(files, block_bytes, max_bytes)
    warm({r.path for r in ranges})
    return _best(lambda: _parallel_read(ranges, threads, block_bytes, direct=False), repeats)


def cold_read(files: Sequence[Path], threads: int = 4, block_bytes: int = 16 << 20,
              max_bytes: int = 1 << 30, repeats: int = 1, fresh: bool = False) -> dict[str, Any]:
    """Buffered read bandwidth right after eviction (what a cold buffered loader can hope for), into reused buffers
    or (``fresh``) into fresh memory."""
    ranges = _ranges(files, block_bytes, max_bytes)
    paths = sorted({r.path for r in ranges})

    def once() -> tuple[int, float]:
        evict(paths)
        return _parallel_read(ranges, threads, block_bytes, direct=False, fresh=fresh)

    return _best(once, repeats)


def memcpy(nbytes: int = 512 << 20, repeats: int = 5) -> dict[str, Any]:
    """DRAM copy bandwidth (torch's parallel copy, all intra-op threads); bytes counted once (read+write pair)."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)

    def once() -> tuple[int, float]:
        t0 = time.perf_counter()
        dst.copy_(src)
        return nbytes, time.perf_counter() - t0

    return _best(once, repeats)


def host_to_device(nbytes: int = 1 << 30, repeats: int = 5, pinned: bool = True) -> dict[str, Any]:
    """Host→GPU copy bandwidth from pinned (or pageable) memory."""
    if not torch.cuda.is_available():
        return {"gbps": None, "error": "no CUDA device"}
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    src.fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

    def once() -> tuple[int, float]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=pinned)
        torch.cuda.synchronize()
        return nbytes, time.perf_counter() - t0

    once()  # warm-up: context, allocator
    return _best(once, repeats)


def measure_ceilings(files: Sequence[Path], device: torch.device, threads: int = 4,
                     max_bytes: int = 1 << 30) -> dict[str, Any]:
    """Every ceiling for this run, measured now on the checkpoint's own files and device."""
    files = list(files)
    out: dict[str, Any] = {
        "files": [str(f) for f in files], "threads": threads, "max_bytes": max_bytes,
        "odirect_read": odirect_read(files, threads, max_bytes=max_bytes),
        "cold_read": cold_read(files, threads, max_bytes=max_bytes),
        "odirect_read_fresh": odirect_read(files, threads, max_bytes=max_bytes, fresh=True),
        "cold_read_fresh": cold_read(files, threads, max_bytes=max_bytes, fresh=True),
        "pagecache_read": pagecache_read(files, threads, max_bytes=max_bytes),
        "memcpy": memcpy(),
    }
    if device.type == "cuda":
        out["h2d_pinned"] = host_to_device(pinned=True)
        out["h2d_pageable"] = host_to_device(pinned=False)
    out["gbps"] = {k: v["gbps"] for k, v in out.items() if isinstance(v, dict) and "gbps" in v}
    # a cold load may read buffered (readahead) or direct: the disk's ceiling is the faster of the two, into reused
    # memory (the disk's limit) and into fresh memory (what a fresh process gets)
    for name, parts in (("disk_read", ("odirect_read", "cold_read")),
                        ("disk_read_fresh", ("odirect_read_fresh", "cold_read_fresh"))):
        disk = [g for g in (out["gbps"][p] for p in parts) if g]
        out["gbps"][name] = max(disk) if disk else None
    return out


# Which ceiling bounds a load from each starting state (DESIGN.md, measurement protocol).
STATE_CEILING = {"cold": "disk_read", "warm": "pagecache_read", "hot": "memcpy", "remote": "remote_download"}
MEMORY = ("fresh", "reused")  # where a load's bytes land: memory faulted in by it, or memory faulted in before


def bounding_ceiling(cache_state: str, device: torch.device, gbps: dict[str, float | None],
                     memory: str = "reused") -> tuple[str, float | None]:
    """(name, GB/s) of the ceiling that bounds a load: the source's, and on a GPU also the host→device link. A cold
    CPU load into fresh memory is bounded by the disk read into fresh memory (``disk_read_fresh``), one into memory
    faulted in before (a pool worker's arena) by the disk's own limit (``disk_read``)."""
    name = STATE_CEILING.get(cache_state)
    if name is None:
        raise ValueError(f"cache_state={cache_state!r}; choose one of {sorted(STATE_CEILING)}")
    if memory not in MEMORY:
        raise ValueError(f"memory={memory!r}; choose one of {MEMORY}")
    if name == "disk_read" and memory == "fresh" and device.type == "cpu" and gbps.get("disk_read_fresh"):
        name = "disk_read_fresh"
    value = gbps.get(name)
    if device.type == "cuda" and gbps.get("h2d_pinned") and (value is None or gbps["h2d_pinned"] < value):  # type: ignore[operator]
        return "h2d_pinned", gbps["h2d_pinned"]
    return name, value
