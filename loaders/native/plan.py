"""Load plans: which bytes of a checkpoint's files go where in one buffer, which chunks a load checks, the views."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from loaders.base import UnsupportedCheckpointError
from loaders.native.convert import read_safetensors_header
from loaders.native.format import (
    INDEX,
    DuplicateTensorError,
    PartitionSizeError,
    align_up,
    check_partitions,
    index_file,
    member,
    parse_index,
    read_member,
)
from loaders.native.integrity import (
    Fingerprint,
    fingerprint,
    mark_verified,
    read_chunk_sums,
    verified_record,
)
from loaders.native.pipeline import Segment
from loaders.native.sllm import DATA_PREFIX, SLLM_INDEX, check_bounds, data_files, parse_sllm_index

SAMPLE_FRACTION = 8  # an aged verify=auto load re-hashes 1/8 of the chunks, the next eighth each time


@dataclass(frozen=True)
class View:
    """A tensor's place in the plan's address space (the read paths make it a view of the bytes there)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    stride: tuple[int, ...] | None = None  # ServerlessLLM entries carry one; None = contiguous


@dataclass(frozen=True)
class Plan:
    """What a load of one checkpoint directory reads: the segments (with the digests it checks), the tensors' views,
    and what a copy of the directory (DRAM tier, SSD tier) needs besides the data files."""

    segments: list[Segment]
    views: list[View]
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
class Planner:
    """Plans loads with the loader's settings: ``format`` (auto detects it per directory), the chunk size of formats
    without an index of their own, the ``verify`` policy, the index size cap and the age after which verify=auto
    samples chunks again."""

    format: str
    chunk_bytes: int
    verify: str
    max_index_bytes: int
    max_age_s: float

    def plan(self, directory: Path, verify: str | None = None) -> Plan:
        """The plan for ``directory`` (``verify`` overrides the policy: ``never`` plans without checksums)."""
        fmt = detect_format(directory) if self.format == "auto" else self.format
        args = (verify or self.verify, self.max_index_bytes, self.max_age_s)
        if fmt == "native":
            return _native_plan(directory, *args)
        if fmt == "sllm":
            return _sllm_plan(directory, self.chunk_bytes, *args)
        return _safetensors_plan(directory, self.chunk_bytes, *args)


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


def record_checks(directory: Path, plan: Plan) -> None:
    """After a load whose checked chunks all passed: mark the directory verified, with where the next sample of an
    aged verify=auto load starts (a load that checked nothing marks nothing)."""
    if plan.verifying or plan.sampled:
        mark_verified(directory, plan.fingerprint, plan.cursor)


def detect_format(directory: Path) -> str:
    """The checkpoint format of ``directory``: native, sllm or safetensors, by the files it holds."""
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


def _native_plan(directory: Path, verify: str, max_index_bytes: int, max_age_s: float) -> Plan:
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
    views = [View(t.name, t.dtype, t.shape, bases[t.partition] + t.offset, t.nbytes) for t in index.tensors]
    return Plan(segments, views, index.total_bytes, [p for p, _ in parts], verifying, names, directory / INDEX,
                [], fp, sampled, cursor)


def _recorded(directory: Path, chunk_bytes: int, max_index_bytes: int
              ) -> tuple[int, dict[str, list[str]] | None, tuple[str, os.stat_result, bytes] | None]:
    """Chunk sums recorded beside a copy of a checksum-less format (remote fetches), and the chunk size to use."""
    rec = read_chunk_sums(directory, max_index_bytes)
    return (chunk_bytes, None, None) if rec is None else rec


def _safetensors_plan(directory: Path, chunk_bytes: int, verify: str, max_index_bytes: int,
                      max_age_s: float) -> Plan:
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
            views.append(View(t.name, t.dtype, t.shape, base + t.offset, t.nbytes))
        base += align_up(st.st_size)
    segments, digests, total = _chunked(files, chunk_bytes, sums, names, aligned=True)
    fp = fingerprint("safetensors", None, [(n, st) for n, (_, st) in zip(names, files, strict=True)], sums_file)
    segments, verifying, sampled, cursor = _checks(directory, fp, segments, digests, verify, max_age_s)
    extra = [directory / sums_file[0]] if sums_file else []
    return Plan(segments, views, total, [p for p, _ in files], verifying, names, None, extra, fp, sampled, cursor)


def _sllm_plan(directory: Path, chunk_bytes: int, verify: str, max_index_bytes: int, max_age_s: float) -> Plan:
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
    views = [View(t.name, t.dtype, t.shape, t.offset, t.nbytes, t.stride) for t in tensors]
    extra = [directory / sums_file[0]] if sums_file else []
    return Plan(segments, views, align_up(total), [p for p, _ in files], verifying, names, index_path, extra, fp,
                sampled, cursor)
