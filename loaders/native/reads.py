"""The read paths that carry out a load plan: private file mappings (CPU), or preads into one destination buffer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from loaders import arena as host_arena
from loaders.base import LoadResult
from loaders.native.format import ALIGNMENT
from loaders.native.mapping import FileMap, map_file, populate
from loaders.native.pipeline import CudaCopyEngine, Segment, ThreadCopyEngine, aligned_empty, run_pipeline
from loaders.native.plan import Plan, View
from loaders.native.sllm import SllmTensor, tensor_view


def _tensor(flat: torch.Tensor, v: View) -> torch.Tensor:
    """The view's tensor over ``flat`` (the bytes from its offset on)."""
    if v.stride is not None:
        return tensor_view(flat, SllmTensor(v.name, v.dtype, v.shape, v.stride, v.offset, v.nbytes))
    return flat[: v.nbytes].view(v.dtype).view(v.shape) if v.nbytes else torch.empty(v.shape, dtype=v.dtype)


@dataclass(frozen=True)
class PlanReader:
    """Reads a plan into tensors with the loader's ``threads``, ``copy_streams`` (the staging ring's copy engine)
    and ``ring_bytes`` (the staging ring's size); which path a load takes is decided by its caller."""

    threads: int
    copy_streams: int
    ring_bytes: int

    def map(self, plan: Plan, tier: str, t0: float, cold: bool) -> LoadResult:
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

    def read(self, plan: Plan, tier: str, t0: float, device: torch.device, direct: bool, ring: bool,
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
