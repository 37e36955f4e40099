"""A remote checkpoint's load: every chunk range-read from the server, its SSD-tier copy written through or behind."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import xxhash

from loaders import arena as host_arena
from loaders.base import LoadResult
from loaders.native import remote_tier, writebehind
from loaders.native.format import NativeFormatError
from loaders.native.integrity import mark_verified, write_chunk_sums
from loaders.native.pipeline import Segment
from loaders.native.plan import Planner
from loaders.native.reads import PlanReader
from loaders.native.remote import RemoteDirectory
from loaders.native.remote_tier import make_skeleton, publish, receive_into_files, sync_then
from loaders.native.tiers import TierCapacityError, clean_dead_temps, temp_entry


def _open_copy(files: list[Path], fds: dict[str, int], direct: bool) -> None:
    """Open an SSD-tier copy's files for writing into ``fds`` (with ``direct``, an O_DIRECT descriptor beside each,
    ``<name>\\0direct``, where the file system has O_DIRECT)."""
    fds.update({f.name: os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in files})
    if direct:
        with contextlib.suppress(OSError):  # a file system without O_DIRECT: buffered writes
            fds.update({f"{f.name}\0direct": os.open(f, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT) for f in files})


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _write_copy(owned: contextlib.ExitStack, lease: torch.Tensor | None, landed: list[tuple[Segment, memoryview]],
                files: list[Path], tmp: Path, local: Path, finish: Callable[[Path], None]) -> None:
    """Write-behind (``loaders/native/writebehind.py``): every chunk a remote load left in the arena (``landed``) into
    the SSD-tier copy in ``tmp``, then its sums and verified mark (``finish``), then publish it as ``local``; the
    temp entry (``owned``) is removed if anything fails. Holding ``lease`` keeps the arena's bytes until done."""
    fds: dict[str, int] = {}
    with owned:
        try:
            _open_copy(files, fds, direct=True)
            for seg, view in landed:
                remote_tier.write_through(fds[seg.path.name], fds.get(f"{seg.path.name}\0direct"), view,
                                          seg.file_offset)
        finally:
            _close_all(fds)
            landed.clear()
        finish(tmp)
        publish(tmp, local, files)
    # the lease ends once the thread that ran this lets go of its arguments (and the model is gone)


@dataclass(frozen=True)
class RemoteLoad:
    """Loads a URL into memory and its copy into the SSD tier under ``ssd_root``: plans with ``planner`` (whose
    ``verify`` and ``chunk_bytes`` also govern the chunk sums recorded for checksum-less formats), reads with
    ``reader``, range requests with ``retries`` and ``timeout_s``. ``staging`` picks the ring as a local load does;
    ``write_behind`` lets a load into an arena write its copy afterwards (``copies``: the process's copies being
    written), unless ``to_dram`` (the loader stages the fetched copy into the DRAM tier at once)."""

    planner: Planner
    reader: PlanReader
    ssd_root: Path
    retries: int
    timeout_s: float
    staging: str
    write_behind: bool
    to_dram: bool
    copies: writebehind.WriteBehind

    def load(self, url: str, local: Path, device: torch.device) -> LoadResult:
        """Range-read every chunk from the server and write it through to a skeleton published into the SSD tier.

        Formats without checksums of their own get chunk sums computed from the bytes as they arrive, written beside
        the SSD-tier copy (``integrity.CHUNKS``), so its later loads are verified."""
        t0 = time.perf_counter()
        remote = RemoteDirectory(url, self.retries, self.timeout_s)
        self.ssd_root.mkdir(parents=True, exist_ok=True)
        clean_dead_temps(self.ssd_root)
        fds: dict[str, int] = {}
        behind = False
        try:
            with contextlib.ExitStack() as owned:
                tmp = owned.enter_context(temp_entry(self.ssd_root, local.name))
                files = make_skeleton(remote, tmp, self.planner.max_index_bytes)
                plan = self.planner.plan(tmp)
                record = not any(seg.digest for seg in plan.segments) and self.planner.verify != "never"
                sums: dict[tuple[str, int], str] = {}

                def fetch(seg: Segment, view: memoryview) -> None:
                    remote.read_into(seg.path.name, seg.file_offset, view)
                    if record:
                        sums[(seg.path.name, seg.file_offset)] = xxhash.xxh3_64_hexdigest(view)

                def record_sums(directory: Path) -> None:
                    by_file: dict[str, list[str]] = {}
                    for (name, _), digest in sorted(sums.items()):
                        by_file.setdefault(name, []).append(digest)
                    write_chunk_sums(directory, self.planner.chunk_bytes, by_file)

                checksummed = plan.verifying or record
                ring = self.staging == "ring" or (self.staging == "auto" and device.type == "cuda")
                arena = host_arena.current() if device.type == "cpu" and not ring else None
                lease = arena.lease(plan.total_bytes) if arena is not None else None
                if device.type == "cpu" and not ring and lease is None:
                    # The SSD-tier files' pages, mapped privately, are the tensors: no model-sized buffer besides them.
                    t_plan = time.perf_counter()
                    stats = receive_into_files(plan.segments, fetch, self.reader.threads)
                    t_fetch = time.perf_counter()
                    if record:
                        record_sums(tmp)
                    names = [f.name for f in files]
                    publish(tmp, local, files, sync=not checksummed)
                    if checksummed:  # re-verifiable: durable and marked verified in the background
                        def then() -> None:
                            with contextlib.suppress(NativeFormatError, OSError):
                                mark_verified(local, self.planner.plan(local, verify="never").fingerprint)
                        sync_then([local / n for n in names], local, then)
                    result = self.reader.map(self.planner.plan(local, verify="never"), "remote", time.perf_counter(),
                                             cold=False)
                    result.bytes_by_tier = {"remote": stats.bytes_read}
                    ph = result.phases_s
                    ph.update(plan_alloc_s=t_plan - t0 + ph["plan_alloc_s"],
                              pipeline_s=t_fetch - t_plan + ph["pipeline_s"], fetch_s=stats.read_s,
                              verify_s=stats.verify_s, write_s=stats.copy_s)
                else:
                    # Into the pinned ring (CUDA) or a pool worker's arena (CPU). From the arena the SSD-tier copy is
                    # written after the load (write-behind: the arena keeps the bytes), with O_DIRECT where aligned:
                    # no fresh page-cache page is filled for a copy the next load reads from the disk anyway. Through
                    # the ring (whose buffers are reused at once) it is written through during the load.
                    behind = lease is not None and self.write_behind and not self.to_dram
                    landed: list[tuple[Segment, memoryview]] = []

                    def write_through(seg: Segment, view: memoryview) -> None:
                        direct = fds.get(f"{seg.path.name}\0direct")
                        remote_tier.write_through(fds[seg.path.name], direct, view, seg.file_offset)

                    def finish(directory: Path) -> None:
                        if record:
                            record_sums(directory)
                        if checksummed:
                            mark_verified(directory, self.planner.plan(directory, verify="never").fingerprint)

                    if not behind:
                        _open_copy(files, fds, direct=lease is not None)
                    result = self.reader.read(plan, "remote", t0, device, False, ring, fetch=fetch,
                                              on_segment=(lambda seg, view: landed.append((seg, view))) if behind
                                              else write_through, dest=lease)
                    if behind:  # the temp entry and the arena's bytes now belong to the copy's writer
                        self.copies.submit(str(local), partial(_write_copy, owned.pop_all(), lease, landed, files,
                                                               tmp, local, finish))
                    del lease
                    if not behind:
                        _close_all(fds)
                        finish(tmp)
                        publish(tmp, local, files)
        except BaseException as exc:
            for fd in fds.values():
                os.close(fd)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise TierCapacityError(f"no space left caching {url} into the SSD tier at {self.ssd_root} "
                                        f"({exc.strerror}); nothing partial was kept. Free space or set "
                                        "loader.ssd_dir") from exc
            raise
        result.phases_s["verified"] = float(plan.verifying)
        result.phases_s["checksums_recorded"] = float(record)
        result.phases_s["written_through"] = float(not behind)
        result.phases_s["write_behind"] = float(behind)
        if behind:
            result.pending = partial(self.copies.wait, str(local))
        return result
