"""Which read path a local load takes: the one the knobs allow, or the fastest the probe measured for the disk."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loaders import arena as host_arena
from loaders.base import LoadResult
from loaders.native import probe as path_probe
from loaders.native.plan import Plan
from loaders.native.reads import PlanReader
from loaders.pagecache import resident_fraction

log = logging.getLogger("coldstart.native")


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


def probe_options(value: ProbeOptions | dict[str, object] | None) -> ProbeOptions:
    """``loader.probe`` as options: unknown keys refused, the cache file under ``COLDSTART_CACHE`` unless given."""
    if isinstance(value, ProbeOptions):
        return value
    raw = dict(value or {})
    allowed = {"bytes", "cache", "quick_bytes"}
    if set(raw) - allowed:
        raise ValueError(f"loader.probe has unknown keys {sorted(set(raw) - allowed)}; allowed: {sorted(allowed)}")
    cache = os.environ.get("COLDSTART_CACHE", os.path.expanduser("~/.cache/coldstart"))
    raw.setdefault("cache", str(Path(cache) / "native-probe.json"))
    return ProbeOptions(**raw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PathChooser:
    """Chooses a local load's read path from the loader's ``staging`` and ``direct_io`` knobs and the measurements in
    ``probes`` (made with ``probe``'s sizes at the reader's threads), and reads the plan that way with ``reader``."""

    reader: PlanReader
    staging: str
    direct_io: str
    probe: ProbeOptions
    probes: path_probe.ProbeCache

    def measures(self, device: torch.device) -> bool:
        """Whether a measurement before the timed loads (``NativeLoader.prepare``) can decide anything on ``device``:
        measuring is on and the knobs leave more than one path, or a page size, open."""
        if self.probe.bytes == 0:
            return False
        allowed = path_probe.candidates(device.type, self.staging, self.direct_io)
        return path_probe.decides(allowed, device.type)

    def record(self, plan: Plan, device: torch.device, nbytes: int,
               use_quick: bool = True, measure: bool = True) -> dict[str, object] | None:
        """The cached measurement for this plan's disk and device, else (``measure``) measure ``nbytes`` now and
        cache it."""
        files = [p for p in plan.files if p.stat().st_size]
        if not files or nbytes == 0:
            return None
        biggest = max(files, key=lambda p: p.stat().st_size)
        chunk = max(s.length for s in plan.segments)
        key = path_probe.probe_key(biggest, device.type, self.reader.threads, chunk)
        record = self.probes.get(key)
        if record is not None and (use_quick or not record.get("quick")):
            return record
        if not measure or min(nbytes, biggest.stat().st_size) < path_probe.MIN_PROBE_BYTES:
            return None  # too small a file to tell the paths apart: the default order
        record = path_probe.measure(biggest, device, self.reader.threads, chunk, nbytes, repeats=1 if use_quick else 3,
                                    fresh_processes=not use_quick)
        record["quick"] = use_quick
        self.probes.put(key, record)
        log.info("native loader: measured read paths on %s (%s): %s", biggest.parent, device.type, record["choice"])
        return record

    def load(self, plan: Plan, tier: str, t0: float, device: torch.device, ring: bool,
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
            record = self.record(plan, device, self.probe.quick_bytes)
        elif path_probe.decides(allowed, device.type if dest != "arena" else "arena"):
            # one path: only the page size to take from a measurement already made; none is made for it here (a
            # quick probe's slice is smaller than any load it would decide for, and such a load keeps 4 KiB pages)
            record = self.record(plan, device, self.probe.quick_bytes, measure=False)
        probe_s = time.perf_counter() - t_probe if record is not None and record.get("quick") else 0.0
        choice = path_probe.choose(allowed, record, device.type, "cold" if cold else "warm",
                                   "fresh" if dest == "ring" and device.type == "cpu" else dest, plan.total_bytes)
        if choice.path == "map":
            del lease
            result = self.reader.map(plan, tier, t0, cold=cold)
        else:
            result = self.reader.read(plan, tier, t0, device, choice.path == "direct", ring, dest=lease,
                                      huge=choice.huge)
        result.phases_s["probe_s"] = probe_s
        result.phases_s["path_probed"] = float(choice.source == "probe")
        result.info.update(path=choice.label(dest), path_source=choice.source)
        return result
