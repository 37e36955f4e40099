"""``loader=native``: tensors as views of one destination allocation (or, on CPU, of private file mappings), threaded
chunked reads, DRAM and remote tiers."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
import xxhash

from loaders import arena as host_arena
from loaders.base import BaseLoader, LoadResult, UnsupportedCheckpointError
from loaders.native import probe as path_probe
from loaders.native import remote_tier, writebehind
from loaders.native.convert import read_safetensors_header
from loaders.native.format import (
    ALIGNMENT,
    INDEX,
    MAX_INDEX_BYTES,
    ChunkChecksumError,
    DuplicateTensorError,
    NativeFormatError,
    PartitionSizeError,
    align_up,
    check_partitions,
    index_file,
    member,
    parse_index,
    read_member,
)
from loaders.native.integrity import (
    SOURCE,
    VERIFIED,
    Fingerprint,
    current,
    fingerprint,
    forget_verified,
    mark_verified,
    read_chunk_sums,
    read_source,
    source_json,
    verified_record,
    write_chunk_sums,
)
from loaders.native.mapping import FileMap, map_file, populate
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
from loaders.native.tiers import DramTier, TierCapacityError, clean_dead_temps, temp_entry
from loaders.pagecache import resident_fraction

__all__ = ["VERIFIED", "NativeLoader", "detect_format"]

log = logging.getLogger("coldstart.native")

FORMATS = ("auto", "native", "safetensors", "sllm")
DIRECT_IO = ("auto", "on", "off")
STAGING = ("auto", "direct", "ring", "map")
VERIFY = ("auto", "always", "never")
SAMPLE_FRACTION = 8  # an aged verify=auto load re-hashes 1/8 of the chunks, the next eighth each time


def _checks(directory: Path, fp: Fingerprint, segments: list[Segment], digests: Sequence[str | None], verify: str,
            max_age_s: float) -> tuple[list[Segment], bool, int, int]:
    """Attach the chunk digests that this load checks: (segments, every chunk checked, chunks sampled, next cursor).

    ``always``: every chunk. ``never``: none. ``auto``: every chunk unless the directory's verified marker was
    written for exactly this fingerprint; then none, or, when that verification is older than ``max_age_s``, a
    rotating sample of 1/``SAMPLE_FRACTION`` of the chunks (so bytes changed under an unchanged fingerprint are
    found within ``SAMPLE_FRACTION`` aged loads)."""
    known = [i for i, d in enumerate(digests) if d is not None]
    if not known or verify == "never":
        return segments, False, 0, 0
    chosen: set[int] | None = None
    sampled, cursor = 0, 0
    if verify == "auto":
        rec = verified_record(directory, fp)
        if rec is not None:
            chosen = set()
            if time.time() - rec["at"] > max_age_s:
                sampled = -(-len(known) // SAMPLE_FRACTION)
                start = rec["cursor"] % len(known)
                chosen = {known[(start + j) % len(known)] for j in range(sampled)}
                cursor = (start + sampled) % len(known)
    out = [replace(seg, digest=digests[i]) if digests[i] is not None and (chosen is None or i in chosen) else seg
           for i, seg in enumerate(segments)]
    return out, chosen is None, sampled, cursor


def _mark(directory: Path, plan: _Plan) -> None:
    if plan.verifying or plan.sampled:
        mark_verified(directory, plan.fingerprint, plan.cursor)


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
    files: list[Path]  # the paths read (a link inside the directory resolved)
    verifying: bool = False  # every chunk with a checksum is checked
    names: list[str] = field(default_factory=list)  # the files' names in the directory, as the index names them
    index: Path | None = None  # the index (or recorded chunk sums) file: staged with the data files
    extra: list[Path] = field(default_factory=list)  # more small files a copy needs (recorded chunk sums)
    fingerprint: Fingerprint = field(default_factory=dict)
    sampled: int = 0  # chunks an aged verify=auto load checks
    cursor: int = 0  # where the next sample starts


@dataclass(frozen=True)
class ProbeOptions:
    """How ``direct_io: auto`` / ``staging: auto`` find the fastest path (``loaders/native/probe.py``): the bytes each
    candidate reads (``bytes``; 0 turns measuring off: the default order then), the JSON file measurements are kept
    in across processes (``cache``; None keeps none), and the bytes of the quick probe a load runs itself when no
    measurement is cached (``quick_bytes``)."""

    bytes: int = 512 << 20
    cache: str | None = None
    quick_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.bytes < 0 or self.quick_bytes < 0:
            raise ValueError(f"loader.probe.bytes={self.bytes} and loader.probe.quick_bytes={self.quick_bytes} must "
                             "be ≥ 0")


def _probe_options(value: ProbeOptions | dict[str, object] | None) -> ProbeOptions:
    if isinstance(value, ProbeOptions):
        return value
    raw = dict(value or {})
    allowed = {"bytes", "cache", "quick_bytes"}
    if set(raw) - allowed:
        raise ValueError(f"loader.probe has unknown keys {sorted(set(raw) - allowed)}; allowed: {sorted(allowed)}")
    cache = os.environ.get("COLDSTART_CACHE", os.path.expanduser("~/.cache/coldstart"))
    raw.setdefault("cache", str(Path(cache) / "native-probe.json"))
    return ProbeOptions(**raw)  # type: ignore[arg-type]


def detect_format(directory: Path) -> str:
    if os.path.lexists(directory / INDEX):
        return "native"
    if os.path.lexists(directory / SLLM_INDEX):
        return "sllm"
    if any(directory.glob("*.safetensors")):
        return "safetensors"
    raise UnsupportedCheckpointError(f"{directory}: neither a native checkpoint ({INDEX}), a ServerlessLLM one "
                                     f"({SLLM_INDEX}) nor safetensors files")


def _chunked(files: list[tuple[Path, os.stat_result]], chunk_bytes: int, sums: dict[str, list[str]] | None,
             names: list[str], aligned: bool) -> tuple[list[Segment], list[str | None], int]:
    """Segments of ``chunk_bytes`` over whole files laid one after another (each at an aligned base if ``aligned``),
    with the recorded digests where a file's record has one per chunk; and the bytes they span."""
    segments: list[Segment] = []
    digests: list[str | None] = []
    base = 0
    for (path, st), name in zip(files, names, strict=True):
        size = st.st_size
        recorded = (sums or {}).get(name)
        if recorded is not None and len(recorded) != -(-size // chunk_bytes):
            recorded = None  # a record of another version of the file: no checksum rather than a false alarm
        for i, off in enumerate(range(0, size, chunk_bytes)):
            segments.append(Segment(path, off, min(chunk_bytes, size - off), base + off, None, f"{name} chunk {i}"))
            digests.append(recorded[i] if recorded is not None else None)
        base += align_up(size) if aligned else size
    return segments, digests, base


def _native_plan(directory: Path, verify: str, max_index_bytes: int, max_age_s: float) -> _Plan:
    raw, ist = index_file(directory, max_index_bytes)
    index = parse_index(raw, str(directory / INDEX))
    parts = check_partitions(directory, index)
    names = [p.name for p in index.partitions]
    fp = fingerprint("native", (INDEX, ist, raw), [(n, st) for n, (_, st) in zip(names, parts, strict=True)])
    segments, digests, bases = [], [], index.bases
    for base, part, (path, _) in zip(bases, index.partitions, parts, strict=True):
        for i, off in enumerate(range(0, part.size, index.chunk_bytes)):
            segments.append(Segment(path, off, min(index.chunk_bytes, part.size - off), base + off, None,
                                    f"{part.name} chunk {i}"))
            digests.append(part.chunks[i])
    segments, verifying, sampled, cursor = _checks(directory, fp, segments, digests, verify, max_age_s)
    views = [_View(t.name, t.dtype, t.shape, bases[t.partition] + t.offset, t.nbytes) for t in index.tensors]
    return _Plan(segments, views, index.total_bytes, [p for p, _ in parts], verifying, names, directory / INDEX,
                 [], fp, sampled, cursor)


def _recorded(directory: Path, chunk_bytes: int, max_index_bytes: int
              ) -> tuple[int, dict[str, list[str]] | None, tuple[str, os.stat_result, bytes] | None]:
    """Chunk sums recorded beside a copy of a checksum-less format (remote fetches), and the chunk size to use."""
    rec = read_chunk_sums(directory, max_index_bytes)
    return (chunk_bytes, None, None) if rec is None else rec


def _safetensors_plan(directory: Path, chunk_bytes: int, verify: str, max_index_bytes: int,
                      max_age_s: float) -> _Plan:
    """Read whole safetensors files into aligned places of one buffer; tensors are views past each header (every
    header validated first)."""
    names = sorted(p.name for p in directory.glob("*.safetensors"))
    files = [member(directory, n) for n in names]
    chunk_bytes, sums, sums_file = _recorded(directory, chunk_bytes, max_index_bytes)
    views, base, seen = [], 0, set()
    for path, st in files:
        _, tensors = read_safetensors_header(path, max_index_bytes)
        for t in tensors:
            if t.name in seen:
                raise DuplicateTensorError(f"{path}: tensor {t.name!r} is also in another shard of {directory}",
                                           path=path, entry=t.name)
            seen.add(t.name)
            views.append(_View(t.name, t.dtype, t.shape, base + t.offset, t.nbytes))
        base += align_up(st.st_size)
    segments, digests, total = _chunked(files, chunk_bytes, sums, names, aligned=True)
    fp = fingerprint("safetensors", None, [(n, st) for n, (_, st) in zip(names, files, strict=True)], sums_file)
    segments, verifying, sampled, cursor = _checks(directory, fp, segments, digests, verify, max_age_s)
    extra = [directory / sums_file[0]] if sums_file else []
    return _Plan(segments, views, total, [p for p, _ in files], verifying, names, None, extra, fp, sampled, cursor)


def _sllm_plan(directory: Path, chunk_bytes: int, verify: str, max_index_bytes: int, max_age_s: float) -> _Plan:
    """ServerlessLLM data files laid at their global offsets in one buffer; tensors are (strided) views."""
    index_path = directory / SLLM_INDEX
    if not os.path.lexists(index_path):
        raise UnsupportedCheckpointError(f"{index_path} not found: not a ServerlessLLM checkpoint directory")
    raw, _, ist = read_member(directory, SLLM_INDEX, max_index_bytes)
    tensors = parse_sllm_index(raw, str(index_path))
    names = [p.name for p in data_files(directory)]
    if not names:
        raise PartitionSizeError(f"{directory}: {SLLM_INDEX} but no {DATA_PREFIX}N data files", path=directory)
    files = [member(directory, n) for n in names]
    check_bounds(tensors, sum(st.st_size for _, st in files), str(index_path))
    chunk_bytes, sums, sums_file = _recorded(directory, chunk_bytes, max_index_bytes)
    segments, digests, total = _chunked(files, chunk_bytes, sums, names, aligned=False)
    fp = fingerprint("sllm", (SLLM_INDEX, ist, raw), [(n, st) for n, (_, st) in zip(names, files, strict=True)],
                     sums_file)
    segments, verifying, sampled, cursor = _checks(directory, fp, segments, digests, verify, max_age_s)
    views = [_View(t.name, t.dtype, t.shape, t.offset, t.nbytes, t.stride) for t in tensors]
    extra = [directory / sums_file[0]] if sums_file else []
    return _Plan(segments, views, align_up(total), [p for p, _ in files], verifying, names, index_path, extra, fp,
                 sampled, cursor)


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


class NativeLoader(BaseLoader):
    """Our loader: reads native (or safetensors) checkpoints with parallel chunked preads into one buffer."""

    formats: ClassVar[tuple[str, ...]] = ("native", "safetensors")  # store formats; it also reads sllm directories

    def __init__(self, format: str = "auto", threads: int = 4, chunk_bytes: int = 16 << 20, direct_io: str = "auto",
                 staging: str = "auto", ring_bytes: int = 256 << 20, copy_streams: int = 4, verify: str = "auto",
                 dram_dir: str | None = None, dram_capacity_bytes: int = 8 << 30, ssd_dir: str | None = None,
                 remote_retries: int = 3, remote_timeout_s: float = 30.0, remote_to_dram: bool = False,
                 max_index_bytes: int = MAX_INDEX_BYTES, verify_max_age_s: float = 86400.0,
                 probe: ProbeOptions | dict[str, object] | None = None, remote_write_behind: bool = True) -> None:
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
        # into an arena, the SSD-tier copy is written after the load from the arena (loaders/native/writebehind.py)
        self.remote_write_behind = bool(remote_write_behind)
        self.write_behind = writebehind.PENDING  # the process's copies: every loader object waits for the same ones
        if max_index_bytes < 1 or verify_max_age_s < 0:
            raise ValueError(f"loader.max_index_bytes={max_index_bytes} must be ≥ 1 and loader.verify_max_age_s="
                             f"{verify_max_age_s} ≥ 0")
        self.max_index_bytes, self.verify_max_age_s = int(max_index_bytes), float(verify_max_age_s)
        if self.ssd_root.is_dir():
            clean_dead_temps(self.ssd_root)  # what a killed fetch left behind
        self.probe = _probe_options(probe)
        self.probes = path_probe.ProbeCache(self.probe.cache)
        self._warned_small_pages = False

    # -- tiers -----------------------------------------------------------------------------------------------
    @staticmethod
    def tier_key(checkpoint: Path | str) -> str:
        """The tier entry's name: the checkpoint's last path part (readable) and a hash of its resolved path or URL
        (identifying: two checkpoints of one name in different directories are different entries)."""
        return url_key(str(checkpoint) if is_url(checkpoint) else Path(checkpoint).resolve().as_uri())

    def _source(self, checkpoint: Path | str) -> Path | None:
        """The directory a DRAM-tier entry is a copy of: the checkpoint, or a URL's SSD-tier copy (if any)."""
        if not is_url(checkpoint):
            return Path(checkpoint)
        local = self.ssd_root / url_key(str(checkpoint))
        return local if local.is_dir() else None

    def _fresh(self, entry: Path, checkpoint: Path | str) -> bool:
        """Whether a DRAM-tier entry still holds its source's bytes: the fingerprint stored when it was staged equals
        the source's now (a URL whose SSD-tier copy is gone has nothing to compare: the entry is its only copy)."""
        stored = read_source(entry)
        if stored is None:
            return False  # staged by an older coldstart, or half-written metadata: stage again
        src = self._source(checkpoint)
        if src is None:
            return True  # a URL whose SSD-tier copy was dropped: this entry is its only local copy
        return current(src, stored, self.max_index_bytes) == stored

    def drop_remote_copies(self, url: str) -> None:
        """Forget a remote checkpoint's SSD-tier and DRAM-tier copies (the ``remote`` cache state); a copy this
        process is still writing is waited for first (else it would be published after the drop)."""
        key = url_key(url)
        local = self.ssd_root / key
        self.write_behind.wait(str(local))
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
        src = Path(checkpoint_dir)
        key = self.tier_key(src)
        with self.dram.reading(key) as hot:
            if hot is not None and self._fresh(hot, src):
                return hot
        # a stale entry (its source changed since staging), if any; never one another process staged meanwhile
        self.dram.remove(key, keep=lambda entry: self._fresh(entry, src))
        entry = self._stage(key, src)
        huge = self.dram.huge_fraction(entry)
        if not self.dram.huge_pages and huge is not None and huge < 0.5 and not self._warned_small_pages:
            self._warned_small_pages = True
            log.warning("DRAM tier %s: %s of %s is on 2 MiB pages (the kernel refused MADV_COLLAPSE or had no free "
                        "huge pages): a hot load populates up to 512× more page-table entries (`make dram-tier`, "
                        "root: python -m loaders.native.hugetmpfs mount)", self.dram.root, f"{huge:.0%}",
                        src.name)
        return entry

    def _stage(self, key: str, src: Path) -> Path:
        """Copy exactly the files a load of ``src`` reads into the DRAM tier as ``key``, with ``src``'s fingerprint."""
        assert self.dram is not None
        plan = self._plan(src, verify="never")  # validates the checkpoint and names its files
        files = list(zip(plan.files, plan.names, strict=True))
        files += [(member(src, p.name)[0], p.name) for p in [*([plan.index] if plan.index else []), *plan.extra]]
        copy = self.dram.insert(key, src, files, extra={SOURCE: source_json(plan.fingerprint)})
        if verified_record(src, plan.fingerprint) is not None:  # a byte-for-byte copy of a verified source
            with self.dram.reading(key) as held:  # held against another process's eviction while it is planned
                if held is not None:
                    mark_verified(held, self._plan(held, verify="never").fingerprint)  # no second hashing pass
        return copy

    def _map(self, plan: _Plan, tier: str, t0: float, cold: bool) -> LoadResult:
        """CPU: tensors are views of private mappings on 2 MiB boundaries. Cold files are populated in parallel with
        the kernel's readahead and touched inside the pipeline (``populate``); resident ones (page cache, DRAM tier)
        are faulted in by touching one byte per page, so 2 MiB folios map 2 MiB at a time."""
        maps: dict[Path, FileMap | None] = {}
        bases: dict[Path, int] = {}
        tensors: dict[Path, torch.Tensor] = {}
        for path in plan.files:
            maps[path], tensors[path] = map_file(path)
        for seg in plan.segments:  # each file's place in the plan's address space
            bases.setdefault(seg.path, seg.dest_offset - seg.file_offset)
        t_map = time.perf_counter()
        stats = populate(maps, plan.segments, self.threads, touch=tensors if cold else None,
                         resident=None if cold else tensors)
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
        phases = {"plan_alloc_s": t_map - t0, "alloc_s": 0.0, "pipeline_s": t_read - t_map, "read_s": stats.read_s,
                  "fault_s": stats.fault_s, "copy_s": 0.0, "wait_s": 0.0, "verify_s": stats.verify_s,
                  "direct_io": 0.0, "max_in_flight": 0.0, "mapped": 1.0, "touched": float(cold), "arena": 0.0}
        return LoadResult(state_dict, phases, {tier: stats.bytes_read}, {"path": "map"})

    def unstage_from_dram(self, checkpoint_dir: Path) -> None:
        """Make sure the checkpoint is not served from the DRAM tier (for the cold and warm states)."""
        if self.dram is not None:
            self.dram.remove(self.tier_key(checkpoint_dir))

    # -- loading ---------------------------------------------------------------------------------------------
    def _plan(self, directory: Path, verify: str | None = None) -> _Plan:
        fmt = detect_format(directory) if self.format == "auto" else self.format
        args = (verify or self.verify, self.max_index_bytes, self.verify_max_age_s)
        if fmt == "native":
            return _native_plan(directory, *args)
        if fmt == "sllm":
            return _sllm_plan(directory, self.chunk_bytes, *args)
        return _safetensors_plan(directory, self.chunk_bytes, *args)

    def load(self, checkpoint_dir: Path | str, device: torch.device, _restaged: bool = False) -> LoadResult:
        """Load a local directory, or a URL (DRAM tier, else its SSD-tier copy, else the remote with write-through).

        A DRAM-tier entry is served only while its source's fingerprint is the one it was staged with; a stale entry
        is dropped and staged again from the source."""
        key = self.tier_key(checkpoint_dir)
        if self.dram is not None:
            stale = False
            with self.dram.reading(key) as hot:
                if hot is not None:
                    t0 = time.perf_counter()
                    if self._fresh(hot, checkpoint_dir):
                        checked = time.perf_counter() - t0
                        result = self._load_from(hot, device, "dram", direct=False)
                        result.phases_s["dram_huge_pages"] = float(self.dram.huge_pages)
                        result.phases_s["dram_huge_fraction"] = self.dram.huge_fraction(hot) or 0.0
                        result.phases_s["source_check_s"] = checked
                        return result
                    stale = True
            src = self._source(checkpoint_dir)
            if stale:
                log.warning("DRAM-tier entry %s is stale (%s changed since it was staged): staging it again", key,
                            checkpoint_dir)
                self.dram.remove(key, keep=lambda entry: self._fresh(entry, checkpoint_dir))
                if src is not None and not _restaged:
                    try:
                        self._stage(key, src)
                    except (TierCapacityError, OSError) as exc:
                        log.warning("could not stage %s into the DRAM tier again (%s); loading it from %s", src,
                                    exc, "the SSD tier" if is_url(checkpoint_dir) else "its directory")
                    else:
                        return self.load(checkpoint_dir, device, _restaged=True)
        if not is_url(checkpoint_dir):
            return self._load_from(Path(checkpoint_dir), device, "ssd", direct=None)
        local = self.ssd_root / key
        self.write_behind.wait(str(local))  # a copy this process is still writing: the SSD tier's in a moment
        if local.exists():
            return self._load_from(local, device, "ssd", direct=None)
        return self._load_remote(str(checkpoint_dir), local, device)

    def _load_remote(self, url: str, local: Path, device: torch.device) -> LoadResult:
        """Range-read every chunk from the server and write it through to a skeleton published into the SSD tier.

        Formats without checksums of their own get chunk sums computed from the bytes as they arrive, written beside
        the SSD-tier copy (``integrity.CHUNKS``), so its later loads are verified."""
        t0 = time.perf_counter()
        remote = RemoteDirectory(url, self.remote_retries, self.remote_timeout_s)
        self.ssd_root.mkdir(parents=True, exist_ok=True)
        clean_dead_temps(self.ssd_root)
        fds: dict[str, int] = {}
        behind = False
        try:
            with contextlib.ExitStack() as owned:
                tmp = owned.enter_context(temp_entry(self.ssd_root, local.name))
                files = make_skeleton(remote, tmp, self.max_index_bytes)
                plan = self._plan(tmp)
                record = not any(seg.digest for seg in plan.segments) and self.verify != "never"
                sums: dict[tuple[str, int], str] = {}

                def fetch(seg: Segment, view: memoryview) -> None:
                    remote.read_into(seg.path.name, seg.file_offset, view)
                    if record:
                        sums[(seg.path.name, seg.file_offset)] = xxhash.xxh3_64_hexdigest(view)

                def record_sums(directory: Path) -> None:
                    by_file: dict[str, list[str]] = {}
                    for (name, _), digest in sorted(sums.items()):
                        by_file.setdefault(name, []).append(digest)
                    write_chunk_sums(directory, self.chunk_bytes, by_file)

                checksummed = plan.verifying or record
                ring = self.staging == "ring" or (self.staging == "auto" and device.type == "cuda")
                arena = host_arena.current() if device.type == "cpu" and not ring else None
                lease = arena.lease(plan.total_bytes) if arena is not None else None
                if device.type == "cpu" and not ring and lease is None:
                    # The SSD-tier files' pages, mapped privately, are the tensors: no model-sized buffer besides them.
                    t_plan = time.perf_counter()
                    stats = receive_into_files(plan.segments, fetch, self.threads)
                    t_fetch = time.perf_counter()
                    if record:
                        record_sums(tmp)
                    names = [f.name for f in files]
                    publish(tmp, local, files, sync=not checksummed)
                    if checksummed:  # re-verifiable: durable and marked verified in the background
                        def then() -> None:
                            with contextlib.suppress(NativeFormatError, OSError):
                                mark_verified(local, self._plan(local, verify="never").fingerprint)
                        sync_then([local / n for n in names], local, then)
                    result = self._map(self._plan(local, verify="never"), "remote", time.perf_counter(), cold=False)
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
                    behind = lease is not None and self.remote_write_behind and not self.remote_to_dram
                    landed: list[tuple[Segment, memoryview]] = []

                    def write_through(seg: Segment, view: memoryview) -> None:
                        direct = fds.get(f"{seg.path.name}\0direct")
                        remote_tier.write_through(fds[seg.path.name], direct, view, seg.file_offset)

                    def finish(directory: Path) -> None:
                        if record:
                            record_sums(directory)
                        if checksummed:
                            mark_verified(directory, self._plan(directory, verify="never").fingerprint)

                    if not behind:
                        _open_copy(files, fds, direct=lease is not None)
                    result = self._read(plan, "remote", t0, device, False, ring, fetch=fetch,
                                        on_segment=(lambda seg, view: landed.append((seg, view))) if behind
                                        else write_through, dest=lease)
                    if behind:  # the temp entry and the arena's bytes now belong to the copy's writer
                        self.write_behind.submit(str(local), partial(_write_copy, owned.pop_all(), lease, landed,
                                                                     files, tmp, local, finish))
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
            result.pending = partial(self.write_behind.wait, str(local))
        if self.remote_to_dram and self.dram is not None:
            try:
                self._stage(local.name, local)
            except (TierCapacityError, NativeFormatError, OSError) as exc:
                log.warning("remote_to_dram: %s was loaded but could not be staged into the DRAM tier at %s: %s",
                            url, self.dram.root, exc)
                result.phases_s["dram_insert_failed"] = 1.0
        return result

    def prepare(self, checkpoint_dir: Path | str, device: torch.device) -> dict[str, object] | None:
        """Before any timed load (the loading experiment's set-up): measure which read path is fastest for this
        checkpoint's disk and ``device`` unless a full measurement is cached; the record (also what trials read)."""
        if is_url(checkpoint_dir) or self.probe.bytes == 0:
            return None
        allowed = path_probe.candidates(device.type, self.staging, self.direct_io)
        if not path_probe.decides(allowed, device.type):
            return None
        plan = self._plan(Path(checkpoint_dir), verify="never")
        return self._probe_record(plan, device, self.probe.bytes, use_quick=False)

    def _probe_record(self, plan: _Plan, device: torch.device, nbytes: int,
                      use_quick: bool = True, measure: bool = True) -> dict[str, object] | None:
        """The cached measurement for this plan's disk and device, else (``measure``) measure ``nbytes`` now and
        cache it."""
        files = [p for p in plan.files if p.stat().st_size]
        if not files or nbytes == 0:
            return None
        biggest = max(files, key=lambda p: p.stat().st_size)
        chunk = max(s.length for s in plan.segments)
        key = path_probe.probe_key(biggest, device.type, self.threads, chunk)
        record = self.probes.get(key)
        if record is not None and (use_quick or not record.get("quick")):
            return record
        if not measure or min(nbytes, biggest.stat().st_size) < path_probe.MIN_PROBE_BYTES:
            return None  # too small a file to tell the paths apart: the default order
        record = path_probe.measure(biggest, device, self.threads, chunk, nbytes, repeats=1 if use_quick else 3,
                                    fresh_processes=not use_quick)
        record["quick"] = use_quick
        self.probes.put(key, record)
        log.info("native loader: measured read paths on %s (%s): %s", biggest.parent, device.type, record["choice"])
        return record

    def _load_from(self, directory: Path, device: torch.device, tier: str, direct: bool | None) -> LoadResult:
        t0 = time.perf_counter()
        plan = self._plan(directory)
        ring = self.staging == "ring" or device.type == "cuda"
        try:
            if device.type == "cpu" and tier == "dram" and self.staging in ("auto", "map"):
                result = self._map(plan, tier, t0, cold=False)  # tmpfs: no O_DIRECT, and a copy only costs
                result.info["path_source"] = "dram tier"
            else:
                result = self._chosen(plan, tier, t0, device, ring, direct)
        except ChunkChecksumError:
            forget_verified(directory)  # whatever was trusted before: the next load verifies every chunk
            raise
        _mark(directory, plan)
        result.phases_s["verified"] = float(plan.verifying)
        result.phases_s["verify_sampled_chunks"] = float(plan.sampled)
        return result

    def _chosen(self, plan: _Plan, tier: str, t0: float, device: torch.device, ring: bool,
                direct: bool | None) -> LoadResult:
        """Take the path the knobs allow, or the fastest one measured for this disk, device, cache state and
        destination (a pool worker's arena when one is free, else fresh memory)."""
        cold = resident_fraction(plan.files, windows=64) < 0.5
        allowed = path_probe.candidates(device.type, self.staging, self.direct_io)
        if direct is False:  # a tier without O_DIRECT (tmpfs)
            allowed = tuple(p for p in allowed if p != "direct") or ("buffered",)
        arena = host_arena.current() if device.type == "cpu" and not ring else None
        lease = arena.lease(plan.total_bytes) if arena is not None else None
        dest = "ring" if ring else ("arena" if lease is not None else "fresh")
        record, t_probe = None, time.perf_counter()
        if len(allowed) > 1:
            record = self._probe_record(plan, device, self.probe.quick_bytes)
        elif path_probe.decides(allowed, device.type if dest != "arena" else "arena"):
            # one path: only the page size to take from a measurement already made; none is made for it here (a
            # quick probe's slice is smaller than any load it would decide for, and such a load keeps 4 KiB pages)
            record = self._probe_record(plan, device, self.probe.quick_bytes, measure=False)
        probe_s = time.perf_counter() - t_probe if record is not None and record.get("quick") else 0.0
        choice = path_probe.choose(allowed, record, device.type, "cold" if cold else "warm",
                                   "fresh" if dest == "ring" and device.type == "cpu" else dest, plan.total_bytes)
        if choice.path == "map":
            del lease
            result = self._map(plan, tier, t0, cold=cold)
        else:
            result = self._read(plan, tier, t0, device, choice.path == "direct", ring, dest=lease, huge=choice.huge)
        result.phases_s["probe_s"] = probe_s
        result.phases_s["path_probed"] = float(choice.source == "probe")
        result.info.update(path=choice.label(dest), path_source=choice.source)
        return result

    def _read(self, plan: _Plan, tier: str, t0: float, device: torch.device, direct: bool, ring: bool,
              fetch: Callable[[Segment, memoryview], None] | None = None,
              on_segment: Callable[[Segment, memoryview], None] | None = None, dest: torch.Tensor | None = None,
              huge: bool = False) -> LoadResult:
        """pread into one destination buffer (CPU: ``dest`` — a leased arena — else fresh memory, faulted in ahead of
        the readers), or through the staging ring (CUDA, or staging=ring), kept in the arena where there is one."""
        t_start = time.perf_counter()
        engine: CudaCopyEngine | ThreadCopyEngine | None = None
        leased = dest is not None and device.type == "cpu"
        if device.type == "cuda":
            dest = torch.empty(plan.total_bytes, dtype=torch.uint8, device=device)
            engine = CudaCopyEngine(device, self.copy_streams)
        elif dest is None:
            dest = aligned_empty(plan.total_bytes, huge=huge)
        if ring and device.type == "cpu":
            engine = ThreadCopyEngine(self.copy_streams)
        t_alloc = time.perf_counter()
        seg_max = max((s.length for s in plan.segments), default=1)
        count = max(1, self.ring_bytes // seg_max)
        arena = host_arena.current() if ring else None
        buffers = arena.ring(count, -(-seg_max // ALIGNMENT) * ALIGNMENT) if arena is not None else None
        fresh = not ring and not leased
        try:
            stats = run_pipeline(plan.segments, dest, self.threads, direct, engine if ring else None,
                                 ring_buffers=count, on_segment=on_segment, fetch=fetch, prefault=fresh,
                                 buffers=buffers)
        finally:
            if buffers is not None and arena is not None:
                arena.release_ring()
        t_read = time.perf_counter()
        state_dict = {}
        for v in plan.views:
            state_dict[v.name] = _tensor(dest[v.offset :], v)
        phases = {"plan_alloc_s": t_alloc - t0, "alloc_s": t_alloc - t_start, "pipeline_s": t_read - t_alloc,
                  "read_s": stats.read_s, "fault_s": stats.fault_s, "faulted_fraction":
                  stats.faulted_bytes / plan.total_bytes if plan.total_bytes else 0.0, "copy_s": stats.copy_s,
                  "wait_s": stats.wait_s, "verify_s": stats.verify_s, "direct_io": float(stats.direct_io),
                  "max_in_flight": float(stats.max_in_flight), "mapped": 0.0,
                  "arena": float(leased), "ring_kept": float(buffers is not None),
                  "fresh_huge": float(fresh and huge)}
        how = "fetch" if fetch is not None else "direct" if direct else "buffered"
        label = how + ("→ring" if ring else ("→fresh" if fresh else "→arena"))
        return LoadResult(state_dict, phases, {tier: stats.bytes_read}, {"path": label})
