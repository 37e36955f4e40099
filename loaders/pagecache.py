"""Page-cache control: evict files (posix_fadvise DONTNEED), warm them, and measure residency with mincore."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value
# mincore's bit 0 says resident (the others are reserved): a byte → its bit 0, counted in C. A Python loop over a
# 2.6 GB file's 640k entries cost ~85 ms, which the native loader paid inside every timed load.
_LOW_BIT = bytes(i & 1 for i in range(256))


class ResidencyError(OSError):
    """mincore could not report a file's page-cache residency."""


def resident_pages(path: Path, windows: int | None = None, window_pages: int = 16) -> tuple[int, int]:
    """(resident pages, pages looked at) of one file in the page cache, via mmap + mincore (maps nothing in).

    ``windows=None`` looks at every page; ``windows=k`` at ``k`` evenly spaced runs of ``window_pages`` pages
    (an estimate for decisions inside a timed load: mincore over a whole multi-GB file costs tens of ms).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise ResidencyError(ctypes.get_errno(), f"mmap failed for {path}")
    finally:
        os.close(fd)
    try:
        n = (size + PAGE - 1) // PAGE
        if windows is None or windows * window_pages >= n:
            spans = [(0, n)]
        else:
            step = n // windows
            spans = [(k * step, min(window_pages, n - k * step)) for k in range(windows)]
        resident = looked = 0
        for first, count in spans:
            vec = (ctypes.c_ubyte * count)()
            if _libc.mincore(ctypes.c_void_p(addr + first * PAGE), min(count * PAGE, size - first * PAGE), vec) != 0:
                raise ResidencyError(ctypes.get_errno(), f"mincore failed for {path}")
            resident += bytes(vec).translate(_LOW_BIT).count(1)
            looked += count
    finally:
        _libc.munmap(ctypes.c_void_p(addr), size)
    return resident, looked


def resident_fraction(paths: Iterable[Path], windows: int | None = None) -> float:
    """Fraction of the files' pages that sit in the page cache (weighted by pages); ``windows`` samples (see
    ``resident_pages``)."""
    resident = total = 0
    for p in paths:
        r, n = resident_pages(p, windows)
        resident += r
        total += n
    return resident / total if total else 0.0


def evict(paths: Iterable[Path]) -> float:
    """Drop the files' clean pages from the page cache; return the resident fraction measured afterwards.

    Works without root, but not for pages still mapped by a live process (so callers close every mapping
    first) and not for a hypervisor's cache beneath a VM (see ``make_copies`` for that case).
    """
    paths = list(paths)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped; make them clean first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return resident_fraction(paths)


def evict_range(path: Path, offset: int, length: int) -> None:
    """Drop the page-cache pages of ``length`` bytes of ``path`` from ``offset`` (see ``evict``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_range(path: Path, offset: int, length: int, block_bytes: int = 16 << 20) -> None:
    """Read ``length`` bytes of ``path`` from ``offset`` once (into the page cache), into a reused buffer."""
    buf = bytearray(min(block_bytes, max(length, 1)))
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < length and (n := os.preadv(fd, [view[: length - done]], offset + done)):
            done += n
    finally:
        os.close(fd)


def warm(paths: Iterable[Path], threads: int = 4, block_bytes: int = 16 << 20, fresh: bool = False) -> float:
    """Read the files fully so they sit in the page cache; return the resident fraction afterwards.

    ``fresh=True`` evicts them first, so the cache holds them as one sequential read from storage leaves them,
    whatever wrote or read them before. That matters: the kernel caches a file in folios of up to 2 MiB, whose size
    follows how the pages got there (readahead makes large ones; a writer's small writes leave small ones), and a
    mapping of large folios is populated in 2 MiB entries. On the CI VM a warm 2.6 GB file just written tensor by
    tensor took 88 ms to populate against 2–6 ms after one read from disk, so without ``fresh`` a warm trial's
    time would depend on which trial or writer touched the file last.
    """
    paths = list(paths)
    if fresh:
        evict(paths)

    def read_all(p: Path) -> None:
        buf = bytearray(block_bytes)
        view = memoryview(buf)
        fd = os.open(p, os.O_RDONLY)
        try:
            off = 0
            while n := os.preadv(fd, [view], off):
                off += n
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(read_all, paths))
    return resident_fraction(paths)


def make_copies(src_dir: Path, dst_root: Path, n: int) -> list[Path]:
    """``n`` distinct copies of a checkpoint directory (distinct disk blocks, no reflinks), each evicted.

    The fallback where eviction cannot be trusted: loading copies in random order, each only once, means no
    cache smaller than the copies together can serve a load.
    """
    dst_root.mkdir(parents=True, exist_ok=True)
    copies = []
    for i in range(n):
        dst = dst_root / f"copy{i:03d}"
        if not dst.exists():
            tmp = dst_root / f".copy{i:03d}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src_dir, tmp, copy_function=_plain_copy)
            tmp.rename(dst)
        evict(p for p in dst.iterdir() if p.is_file())
        copies.append(dst)
    return copies


def _plain_copy(src: str, dst: str) -> str:
    # byte copy through user space: never a reflink or server-side copy that would share blocks
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(16 << 20):
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return dst
