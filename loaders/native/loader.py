"""``loader=native``: tensors as views of one destination allocation (or, on CPU, of private file mappings), threaded
chunked reads, DRAM and remote tiers."""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import shutil
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from loaders.base import BaseLoader, LoadResult, UnsupportedCheckpointError
from loaders.native import remote_tier
from loaders.native.convert import ST_CODES, _clean_stale_temps
from loaders.native.format import (
    ALIGNMENT,
    DTYPES,
    INDEX,
    PartitionSizeError,
    TensorBoundsError,
    align_up,
    check_partitions,
    read_index,
)
from loaders.native.mapping import map_file, populate
from loaders.native.pipeline import CudaCopyEngine, Segment, ThreadCopyEngine, aligned_empty, run_pipeline
from loaders.native.remote import RemoteDirectory, is_url, url_key
from loaders.native.remote_tier import make_skeleton, publish, receive_into_files, sync_then
from loaders.native.sllm import (
    DATA_PREFIX,
    SLLM_INDEX,
    SllmTensor,
    check_bounds,
    data_files,
    parse_sllm_index,
    tensor_view,
)
from loaders.native.tiers import DramTier, TierCapacityError
from loaders.pagecache import resident_fraction

log = logging.getLogger("coldstart.native")

FORMATS = ("auto", "native", "safetensors", "sllm")
DIRECT_IO = ("auto", "on", "off")
STAGING = ("auto", "direct", "ring", "map")
VERIFY = ("auto", "always", "never")
VERIFIED = ".coldstart-verified.json"  # partition (size, mtime_ns, inode) at the last successful verification


def _fingerprint(files: list[Path]) -> dict[str, list[int]]:
    out = {}
    for f in files:
        st = f.stat()
        out[f.name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def _verified_before(directory: Path, files: list[Path]) -> bool:
    try:
        return bool(json.loads((directory / VERIFIED).read_text()) == _fingerprint(files))
    except (OSError, ValueError):
        return False


def _mark_verified(directory: Path, files: list[Path]) -> None:
    tmp = directory / f"{VERIFIED}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(_fingerprint(files)))
        tmp.replace(directory / VERIFIED)
    except OSError:  # a read-only checkpoint directory: verify again next time
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _View:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    stride: tuple[int, ...] | None = None  # ServerlessLLM entries carry one; None = contiguous


def _tensor(flat: torch.Tensor, v: _View) -> torch.Tensor:
    """The view's tensor over ``flat`` (the bytes from its offset on)."""
    if v.stride is not None:
        return tensor_view(flat, SllmTensor(v.name, v.dtype, v.shape, v.stride, v.offset, v.nbytes))
    return flat[: v.nbytes].view(v.dtype).view(v.shape) if v.nbytes else torch.empty(v.shape, dtype=v.dtype)


@dataclass(frozen=True)
class _Plan:
    segments: list[Segment]
    views: list[_View]
    total_bytes: int
    files: list[Path]
    verifying: bool = False


def detect_format(directory: Path) -> str:
    if (directory / INDEX).exists():
        return "native"
    if (directory / SLLM_INDEX).exists():
        return "sllm"
    if any(directory.glob("*.safetensors")):
        return "safetensors"
    raise UnsupportedCheckpointError(f"{directory}: neither a native checkpoint ({INDEX}), a ServerlessLLM one "
                                     f"({SLLM_INDEX}) nor safetensors files")


def _native_plan(directory: Path, verify: str) -> _Plan:
    index = read_index(directory)
    check_partitions(directory, index)
    files = [directory / p.name for p in index.partitions]
    check = verify == "always" or (verify == "auto" and not _verified_before(directory, files))
    segments, bases = [], index.bases
    for base, part in zip(bases, index.partitions, strict=True):
        path = directory / part.name
        for i, off in enumerate(range(0, part.size, index.chunk_bytes)):
            n = min(index.chunk_bytes, part.size - off)
            segments.append(Segment(path, off, n, base + off, part.chunks[i] if check else None,
                                    f"{part.name} chunk {i}"))
    views = [_View(t.name, t.dtype, t.shape, bases[t.partition] + t.offset, t.nbytes) for t in index.tensors]
    return _Plan(segments, views, index.total_bytes, files, verifying=check)


def _safetensors_plan(directory: Path, chunk_bytes: int) -> _Plan:
    """Read whole safetensors files into aligned places of one buffer; tensors are views past each header."""
    segments, views, base, files = [], [], 0, sorted(directory.glob("*.safetensors"))
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for off in range(0, size, chunk_bytes):
            segments.append(Segment(path, off, min(chunk_bytes, size - off), base + off, None, path.name))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in ST_CODES:
                raise UnsupportedCheckpointError(f"{path}: tensor {name!r} has dtype {meta['dtype']}")
            start, end = meta["data_offsets"]
            if 8 + n + end > size:
                raise TensorBoundsError(f"{path}: tensor {name!r} ends beyond the file: truncated")
            views.append(_View(name, DTYPES[ST_CODES[meta["dtype"]]], tuple(meta["shape"]), base + 8 + n + start,
                               end - start))
        base += align_up(size)
    return _Plan(segments, views, base, files)


def _sllm_plan(directory: Path, chunk_bytes: int) -> _Plan:
    """ServerlessLLM data files laid at their global offsets in one buffer; tensors are (strided) views."""
    index_path = directory / SLLM_INDEX
    if not index_path.exists():
        raise UnsupportedCheckpointError(f"{index_path} not found: not a ServerlessLLM checkpoint directory")
    tensors = parse_sllm_index(index_path.read_bytes(), str(index_path))
    files = data_files(directory)
    if not files:
        raise PartitionSizeError(f"{directory}: {SLLM_INDEX} but no {DATA_PREFIX}N data files")
    segments, base = [], 0
    for path in files:
        size = path.stat().st_size
        for off in range(0, size, chunk_bytes):
            segments.append(Segment(path, off, min(chunk_bytes, size - off), base + off, None, path.name))
        base += size
    check_bounds(tensors, base, str(index_path))
    views = [_View(t.name, t.dtype, t.shape, t.offset, t.nbytes, t.stride) for t in tensors]
    return _Plan(segments, views, align_up(base), files)


class NativeLoader(BaseLoader):
    """Our loader: reads native (or safetensors) checkpoints with parallel chunked preads into one buffer."""

    formats: ClassVar[tuple[str, ...]] = ("native", "safetensors")  # store formats; it also reads sllm directories

    def __init__(self, format: str = "auto", threads: int = 4, chunk_bytes: int = 16 << 20, direct_io: str = "auto",
                 staging: str = "auto", ring_bytes: int = 256 << 20, copy_streams: int = 4, verify: str = "auto",
                 dram_dir: str | None = None, dram_capacity_bytes: int = 8 << 30, ssd_dir: str | None = None,
                 remote_retries: int = 3, remote_timeout_s: float = 30.0, remote_to_dram: bool = False) -> None:
        for key, value, allowed in (("format", format, FORMATS), ("direct_io", direct_io, DIRECT_IO),
                                    ("staging", staging, STAGING), ("verify", verify, VERIFY)):
            if value not in allowed:
                raise ValueError(f"loader.{key}={value!r}; choose one of {allowed}")
        if threads < 1 or chunk_bytes < ALIGNMENT or chunk_bytes % ALIGNMENT:
            raise ValueError(f"loader.threads={threads} must be ≥ 1 and loader.chunk_bytes={chunk_bytes} a multiple "
                             f"of {ALIGNMENT}")
        if ring_bytes < chunk_bytes:
            raise ValueError(f"loader.ring_bytes={ring_bytes} must hold at least one chunk ({chunk_bytes} bytes)")
        self.format, self.threads, self.chunk_bytes = format, threads, chunk_bytes
        self.direct_io, self.staging, self.ring_bytes = direct_io, staging, ring_bytes
        self.copy_streams, self.verify = copy_streams, verify
        self.dram = DramTier(dram_dir, dram_capacity_bytes) if dram_dir else None
        if remote_retries < 0 or remote_timeout_s <= 0:
            raise ValueError(f"loader.remote_retries={remote_retries} must be ≥ 0 and loader.remote_timeout_s="
                             f"{remote_timeout_s} > 0")
        cache = os.environ.get("COLDSTART_CACHE", os.path.expanduser("~/.cache/coldstart"))
        self.ssd_root = Path(os.path.expanduser(ssd_dir)) if ssd_dir else Path(cache) / "remote-ssd"
        self.remote_retries, self.remote_timeout_s = remote_retries, remote_timeout_s
        self.remote_to_dram = remote_to_dram
        self._warned_small_pages = False

    # -- tiers -----------------------------------------------------------------------------------------------
    @staticmethod
    def tier_key(checkpoint: Path | str) -> str:
        return url_key(str(checkpoint)) if is_url(checkpoint) else Path(checkpoint).resolve().name

    def drop_remote_copies(self, url: str) -> None:
        """Forget a remote checkpoint's SSD-tier and DRAM-tier copies (the ``remote`` cache state)."""
        key = url_key(url)
        local = self.ssd_root / key
        if local.exists():
            victim = self.ssd_root / f".{key}.evicting-{uuid.uuid4().hex[:8]}"
            local.rename(victim)
            shutil.rmtree(victim, ignore_errors=True)
        if self.dram is not None:
            self.dram.remove(key)

    def stage_in_dram(self, checkpoint_dir: Path) -> Path:
        """Put a checkpoint in the DRAM tier (the ``hot`` state)."""
        if self.dram is None:
            raise UnsupportedCheckpointError("the DRAM tier is off: set loader.dram_dir")
        if not self.dram.huge_pages and not self._warned_small_pages:
            self._warned_small_pages = True
            log.warning("DRAM tier %s has 4 KiB pages: a hot load populates 512× more page-table entries than on a "
                        "huge-page tmpfs (`make dram-tier`, root: python -m loaders.native.hugetmpfs mount)",
                        self.dram.root)
        src = Path(checkpoint_dir)
        copy = self.dram.insert(self.tier_key(src), src)
        if (src / INDEX).exists():  # our byte-for-byte copy of a verified source needs no second hashing pass
            files = [src / p.name for p in read_index(src).partitions]
            if _verified_before(src, files):
                _mark_verified(copy, [copy / f.name for f in files])
        return copy

    def _map(self, plan: _Plan, tier: str, t0: float, cold: bool | None = None) -> LoadResult:
        """CPU: tensors are views of private mappings, populated in parallel (and, for files read from the disk now,
        touched inside the pipeline: ``populate``). ``cold=None`` asks the page cache."""
        maps: dict[Path, mmap.mmap] = {}
        bases: dict[Path, int] = {}
        tensors: dict[Path, torch.Tensor] = {}
        for path in plan.files:
            maps[path], tensors[path] = map_file(path)
        for seg in plan.segments:  # each file's place in the plan's address space
            bases.setdefault(seg.path, seg.dest_offset - seg.file_offset)
        if cold is None:
            cold = resident_fraction(plan.files, windows=64) < 0.5
        t_map = time.perf_counter()
        stats = populate(maps, plan.segments, self.threads, touch=tensors if cold else None)
        t_read = time.perf_counter()
        ordered = sorted(bases.items(), key=lambda kv: kv[1])
        state_dict = {}
        for v in plan.views:
            path, base = next((p, b) for p, b in reversed(ordered) if b <= v.offset)
            flat = tensors[path][v.offset - base :]
            if len(flat) < v.nbytes:  # a ServerlessLLM tensor spanning two data files: join the pieces (a copy)
                end = v.offset + v.nbytes
                later = [tensors[p][: end - b] for p, b in ordered if v.offset < b < end]
                flat = torch.cat([flat, *later])
            state_dict[v.name] = _tensor(flat, v)
        phases = {"plan_alloc_s": t_map - t0, "pipeline_s": t_read - t_map, "read_s": stats.read_s,
                  "copy_s": 0.0, "wait_s": 0.0, "verify_s": stats.verify_s, "direct_io": 0.0,
                  "max_in_flight": 0.0, "mapped": 1.0, "touched": float(cold)}
        return LoadResult(state_dict, phases, {tier: stats.bytes_read})

    def unstage_from_dram(self, checkpoint_dir: Path) -> None:
        """Make sure the checkpoint is not served from the DRAM tier (for the cold and warm states)."""
        if self.dram is not None:
            self.dram.remove(self.tier_key(checkpoint_dir))

    # -- loading ---------------------------------------------------------------------------------------------
    def _plan(self, directory: Path, verify: str | None = None) -> _Plan:
        fmt = detect_format(directory) if self.format == "auto" else self.format
        if fmt == "native":
            return _native_plan(directory, verify or self.verify)
        if fmt == "sllm":
            return _sllm_plan(directory, self.chunk_bytes)
        return _safetensors_plan(directory, self.chunk_bytes)

    def load(self, checkpoint_dir: Path | str, device: torch.device) -> LoadResult:
        """Load a local directory, or a URL (DRAM tier, else its SSD-tier copy, else the remote with write-through)."""
        key = self.tier_key(checkpoint_dir)
        if self.dram is not None:
            with self.dram.reading(key) as hot:
                if hot is not None:
                    result = self._load_from(hot, device, "dram", direct=False)
                    result.phases_s["dram_huge_pages"] = float(self.dram.huge_pages)
                    return result
        if not is_url(checkpoint_dir):
            return self._load_from(Path(checkpoint_dir), device, "ssd", direct=None)
        local = self.ssd_root / key
        if local.exists():
            return self._load_from(local, device, "ssd", direct=None)
        return self._load_remote(str(checkpoint_dir), local, device)

    def _load_remote(self, url: str, local: Path, device: torch.device) -> LoadResult:
        """Range-read every chunk from the server and write it through to a skeleton published into the SSD tier."""
        t0 = time.perf_counter()
        remote = RemoteDirectory(url, self.remote_retries, self.remote_timeout_s)
        self.ssd_root.mkdir(parents=True, exist_ok=True)
        _clean_stale_temps(self.ssd_root, local.name)
        tmp = self.ssd_root / f".{local.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        fds: dict[Path, int] = {}
        try:
            files = make_skeleton(remote, tmp)
            plan = self._plan(tmp)

            def fetch(seg: Segment, view: memoryview) -> None:
                remote.read_into(seg.path.name, seg.file_offset, view)

            ring = self.staging == "ring" or (self.staging == "auto" and device.type == "cuda")
            if device.type == "cpu" and not ring:
                # The SSD-tier files' pages, mapped privately, are the tensors: no model-sized buffer besides them.
                t_plan = time.perf_counter()
                stats = receive_into_files(plan.segments, fetch, self.threads)
                t_fetch = time.perf_counter()
                names = [f.name for f in files]
                publish(tmp, local, files, sync=not plan.verifying)
                if plan.verifying:  # re-verifiable: durable and marked verified in the background
                    entry = [local / n for n in names]
                    sync_then(entry, local, lambda: _mark_verified(local, entry))
                result = self._map(self._plan(local, verify="never"), "remote", time.perf_counter(), cold=False)
                result.bytes_by_tier = {"remote": stats.bytes_read}
                ph = result.phases_s
                ph.update(plan_alloc_s=t_plan - t0 + ph["plan_alloc_s"], pipeline_s=t_fetch - t_plan + ph["pipeline_s"],
                          fetch_s=stats.read_s, verify_s=stats.verify_s, write_s=stats.copy_s)
            else:
                fds.update({f: os.open(f, os.O_WRONLY) for f in files})

                def write_through(seg: Segment, view: memoryview) -> None:
                    remote_tier.pwrite_all(fds[seg.path], view, seg.file_offset)

                result = self._read(plan, "remote", t0, device, False, ring, fetch=fetch, on_segment=write_through)
                for fd in fds.values():
                    os.close(fd)
                fds.clear()
                if plan.verifying:
                    _mark_verified(tmp, plan.files)
                publish(tmp, local, files)
        except BaseException as exc:
            for fd in fds.values():
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise TierCapacityError(f"no space left caching {url} into the SSD tier at {self.ssd_root}; "
                                        "nothing partial was kept. Free space or set loader.ssd_dir") from exc
            raise
        result.phases_s["verified"] = float(plan.verifying)
        result.phases_s["written_through"] = 1.0
        if self.remote_to_dram and self.dram is not None:
            try:
                self.dram.insert(local.name, local)
            except TierCapacityError:
                result.phases_s["dram_insert_failed"] = 1.0
        return result

    def _load_from(self, directory: Path, device: torch.device, tier: str, direct: bool | None) -> LoadResult:
        t0 = time.perf_counter()
        plan = self._plan(directory)
        ring = self.staging == "ring" or (self.staging == "auto" and device.type == "cuda")
        # CPU: the tensors are private mappings of the files, populated by parallel MADV_POPULATE_READ (which reads
        # cold pages with the kernel's readahead). On the 2-core VM a cold opt-1.3b loaded that way in 0.88–1.09 s
        # against 2.9–7.1 s with O_DIRECT preads into a fresh buffer and 2.1–2.5 s for safetensors
        # (benchmarks/cold_inprocess.py): a fresh model-sized buffer costs more than the page cache it avoids.
        if device.type == "cpu" and (self.staging == "map" or (self.staging == "auto" and self.direct_io != "on")):
            result = self._map(plan, tier, t0, cold=False if tier == "dram" else None)
        else:
            if direct is None:  # O_DIRECT only when reading cold from the SSD tier
                direct = self.direct_io == "on" or (
                    self.direct_io == "auto" and resident_fraction(plan.files, windows=64) < 0.5)
            result = self._read(plan, tier, t0, device, direct, ring)
        if plan.verifying:
            _mark_verified(directory, plan.files)
        result.phases_s["verified"] = float(plan.verifying)
        return result

    def _read(self, plan: _Plan, tier: str, t0: float, device: torch.device, direct: bool, ring: bool,
              fetch: Callable[[Segment, memoryview], None] | None = None,
              on_segment: Callable[[Segment, memoryview], None] | None = None) -> LoadResult:
        """pread into one destination buffer (CPU), or through the staging ring (CUDA, or staging=ring)."""
        if device.type == "cuda":
            dest = torch.empty(plan.total_bytes, dtype=torch.uint8, device=device)
            engine: CudaCopyEngine | ThreadCopyEngine | None = CudaCopyEngine(device, self.copy_streams)
        else:
            dest = aligned_empty(plan.total_bytes)
            engine = ThreadCopyEngine(self.copy_streams) if ring else None
        t_alloc = time.perf_counter()
        seg_max = max((s.length for s in plan.segments), default=1)
        stats = run_pipeline(plan.segments, dest, self.threads, direct, engine if ring else None,
                             ring_buffers=max(1, self.ring_bytes // seg_max), on_segment=on_segment, fetch=fetch)
        t_read = time.perf_counter()
        state_dict = {}
        for v in plan.views:
            state_dict[v.name] = _tensor(dest[v.offset :], v)
        phases = {"plan_alloc_s": t_alloc - t0, "pipeline_s": t_read - t_alloc, "read_s": stats.read_s,
                  "copy_s": stats.copy_s, "wait_s": stats.wait_s, "verify_s": stats.verify_s,
                  "direct_io": float(stats.direct_io), "max_in_flight": float(stats.max_in_flight)}
        return LoadResult(state_dict, phases, {tier: stats.bytes_read})
