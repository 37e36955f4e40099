"""Zero-copy CPU loads: map checkpoint files privately and populate the mappings in parallel.

When a checkpoint's bytes already sit in memory (the page cache, or the DRAM tier's tmpfs), copying them into a
fresh buffer costs an allocation and a copy per byte; mapping them costs only page-table entries. Cold files are
mapped too: populating the mapping reads them with the kernel's readahead into the page cache, whose pages are
then the tensors. Reader threads
call ``madvise(MADV_POPULATE_READ)`` on disjoint ranges (Linux ≥ 5.14; elsewhere they touch one byte per page),
verifying each chunk's checksum from the mapping when asked, so the load ends with every page resident and mapped.
Mappings are MAP_PRIVATE with write permission: tensors are writable, a write copies that page and never reaches
the file.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from loaders.native.format import PartitionSizeError
from loaders.native.pipeline import PipelineStats, Segment, parallel_for, verify_segment

MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux uapi value; Python 3.11 lacks the name
PAGE = mmap.PAGESIZE


def map_file(path: Path) -> tuple[mmap.mmap, torch.Tensor]:
    """A private, writable mapping of the whole file and a uint8 tensor over it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return mmap.mmap(-1, 1), torch.empty(0, dtype=torch.uint8)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return mm, torch.frombuffer(mm, dtype=torch.uint8)


def _populate(mm: mmap.mmap, start: int, length: int) -> None:
    begin = start - start % PAGE
    try:
        mm.madvise(MADV_POPULATE_READ, begin, length + (start - begin))
    except OSError:  # kernels before 5.14: fault the pages in by reading one byte of each
        view = memoryview(mm)
        sum(view[i] for i in range(begin, start + length, PAGE))
        view.release()


def populate(maps: dict[Path, mmap.mmap], segments: Sequence[Segment], threads: int) -> PipelineStats:
    """Populate (and verify) the segments' ranges of their files' mappings with ``threads`` workers."""
    stats = PipelineStats()

    def work(i: int, _: None) -> None:
        seg = segments[i]
        mm = maps[seg.path]
        if seg.file_offset + seg.length > len(mm):
            raise PartitionSizeError(f"{seg.path}: {len(mm)} bytes, but a chunk ends at "
                                     f"{seg.file_offset + seg.length}: the file is truncated")
        t0 = time.perf_counter()
        _populate(mm, seg.file_offset, seg.length)
        t1 = time.perf_counter()
        if seg.digest is not None:
            view = memoryview(mm)[seg.file_offset : seg.file_offset + seg.length]
            try:
                verify_segment(view, seg)
            finally:
                view.release()
        stats.add(read_s=t1 - t0, verify_s=time.perf_counter() - t1, bytes_read=seg.length)

    parallel_for(len(segments), threads, work, lambda: None, "coldstart-map")
    return stats
