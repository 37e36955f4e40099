"""Zero-copy CPU loads: map checkpoint files privately and populate the mappings in parallel.

When a checkpoint's bytes already sit in memory (the page cache, or the DRAM tier's tmpfs), copying them into a
fresh buffer costs an allocation and a copy per byte; mapping them costs only page-table entries. Cold files are
mapped too: populating the mapping reads them with the kernel's readahead into the page cache, whose pages are
then the tensors. Reader threads
call ``madvise(MADV_POPULATE_READ)`` on disjoint ranges (Linux ≥ 5.14; elsewhere they touch one byte per page),
verifying each chunk's checksum from the mapping when asked, so the load ends with every page resident and mapped.
Mappings are MAP_PRIVATE with write permission: tensors are writable, a write copies that page and never reaches
the file.

Every mapping starts on a 2 MiB boundary (``FileMap``), so a file whose page cache holds 2 MiB folios (readahead on
ext4/xfs, a DRAM-tier file collapsed into huge pages: ``hugetmpfs.collapse``) is mapped one page-table entry per
2 MiB instead of 512. The kernel aligns large mappings of some file systems by itself, but not tmpfs mounted without
``huge=``: there a hot load's opt-125m took 10–12 ms of page faults unaligned against 1.3–2 ms aligned on the CI VM.
Pages already resident are faulted in by touching one byte per 4 KiB page (the kernel maps 16 at a time around each
fault), not by ``MADV_POPULATE_READ``, which walks them one by one (13–15 ms for the same 4 KiB-page file).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from loaders.native.format import PartitionSizeError, open_regular
from loaders.native.pipeline import PipelineStats, Segment, parallel_for, verify_segment

MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux uapi value; Python 3.11 lacks the name
PAGE = mmap.PAGESIZE
HUGE = 2 << 20  # a PMD's reach on x86-64 and arm64 with 4 KiB pages
MAP_FIXED = 0x10
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_MAP_FAILED = ctypes.c_void_p(-1).value


class FileMap:
    """A whole-file mapping placed on a 2 MiB boundary inside an anonymous reservation (``mm``) that owns it: closing
    or freeing ``mm`` unmaps both. ``tensor`` views the file's bytes; offsets below are the file's."""

    def __init__(self, fd: int, size: int, shared: bool = False, writable: bool = True) -> None:
        self.size = size
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable or not shared else 0)
        self.mm = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anchor = ctypes.c_char.from_buffer(self.mm)
        base = ctypes.addressof(anchor)
        del anchor  # the buffer export ends here: ``mm`` may be closed later
        self.delta = -base % HUGE
        flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | MAP_FIXED
        if _libc.mmap(base + self.delta, size, prot, flags, fd, 0) in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            self.mm.close()
            raise OSError(err, f"mmap of {size} bytes at a 2 MiB boundary failed: {os.strerror(err)}")
        self.address = base + self.delta
        self.tensor = torch.frombuffer(self.mm, dtype=torch.uint8)[self.delta : self.delta + size]

    def madvise(self, advice: int, start: int, length: int) -> None:
        begin = start - start % PAGE
        self.mm.madvise(advice, self.delta + begin, length + (start - begin))

    def view(self, start: int, length: int) -> memoryview:
        return memoryview(self.mm)[self.delta + start : self.delta + start + length]

    def __len__(self) -> int:
        return self.size


def map_file(path: Path, shared: bool = False) -> tuple[FileMap | None, torch.Tensor]:
    """A private, writable mapping of the whole file on a 2 MiB boundary and a uint8 tensor over it (``shared``: a
    shared one, writes reach the file). An empty file maps to nothing."""
    fd = open_regular(path, os.O_RDWR if shared else 0)  # never through a link swapped in, never a FIFO
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None, torch.empty(0, dtype=torch.uint8)
        fm = FileMap(fd, size, shared=shared)
    finally:
        os.close(fd)
    return fm, fm.tensor


def pmd_mapped_bytes(fm: FileMap) -> int:
    """Bytes of the mapping that are mapped 2 MiB at a time now (``/proc/self/smaps``: Shmem/FilePmdMapped)."""
    start = f"{fm.address:x}-"
    inside = False
    total = 0
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0] and not line.startswith(("Shmem", "File")):
                inside = line.startswith(start)
                continue
            if inside and ("PmdMapped:" in line):
                total += int(line.split()[1]) * 1024
    return total


def _populate(fm: FileMap, start: int, length: int) -> None:
    try:
        fm.madvise(MADV_POPULATE_READ, start, length)
    except OSError:  # kernels before 5.14: fault the pages in by reading one byte of each
        int(fm.tensor[start : start + length : PAGE].sum())


def spans(segments: Sequence[Segment]) -> list[Segment]:
    """The segments merged into their contiguous runs per file, without checksums: one ``madvise`` per run instead
    of one per chunk (on a warm 2.6 GB file the per-chunk calls cost 8–10 ms against 6–7 ms for one call)."""
    runs: list[Segment] = []
    for seg in segments:
        last = runs[-1] if runs else None
        if last is not None and last.path == seg.path and last.file_offset + last.length == seg.file_offset:
            runs[-1] = replace(last, length=last.length + seg.length)
        else:
            runs.append(replace(seg, digest=None, label=seg.path.name))
    return runs


def populate(maps: dict[Path, FileMap | None], segments: Sequence[Segment], threads: int,
             touch: dict[Path, torch.Tensor] | None = None,
             resident: dict[Path, torch.Tensor] | None = None) -> PipelineStats:
    """Populate (and verify) the segments' ranges of their files' mappings with ``threads`` workers.

    ``touch`` (the files' tensors; cold files): after populating a chunk with ``MADV_POPULATE_READ`` (which reads it
    with the kernel's readahead), read one byte of each of its 4 KiB pages while the other workers still wait on
    the disk: pages the disk just filled cost a first CPU access each, which on the CI VM (a Firecracker guest) is
    0.14–1.3 s for 2.6 GB when paid after the load, against 0.011 s for a second pass; touched inside the pipeline
    that cost overlaps the reads (``fault_s`` sums it). ``resident`` (the files' tensors; pages in memory already):
    fault each merged run in by touching one byte per page, from one thread (more only contend for the mm's locks).
    """
    stats = PipelineStats()
    if touch is None and all(s.digest is None for s in segments):
        segments, threads = spans(segments), 1

    def work(i: int, _: None) -> None:
        seg = segments[i]
        fm = maps[seg.path]
        size = len(fm) if fm is not None else 0
        if seg.file_offset + seg.length > size:
            raise PartitionSizeError(f"{seg.path}: {size} bytes, but a chunk ends at "
                                     f"{seg.file_offset + seg.length}: the file is truncated")
        assert fm is not None
        t0 = time.perf_counter()
        if resident is not None:
            int(resident[seg.path][seg.file_offset : seg.file_offset + seg.length : PAGE].sum())
        else:
            _populate(fm, seg.file_offset, seg.length)
        t1 = time.perf_counter()
        if touch is not None:  # torch reads without the GIL: the other workers keep their reads going
            int(touch[seg.path][seg.file_offset : seg.file_offset + seg.length : PAGE].sum())
        t2 = time.perf_counter()
        if seg.digest is not None:
            view = fm.view(seg.file_offset, seg.length)
            try:
                verify_segment(view, seg)
            finally:
                view.release()
        stats.add(read_s=t1 - t0, fault_s=t2 - t1, verify_s=time.perf_counter() - t2, bytes_read=seg.length)

    parallel_for(len(segments), threads, work, lambda: None, "coldstart-map")
    return stats
