"""Which read path is fastest on this machine: measured on the checkpoint's own file, cached per boot and disk.

The native loader can fill memory three ways on CPU: ``map`` (private mappings of the files, populated through the
page cache and the kernel's readahead: zero-copy), ``direct`` (O_DIRECT preads into one destination buffer) and
``buffered`` (preads through the page cache into that buffer); on CUDA the reads into the pinned ring are O_DIRECT or
buffered. Which is fastest depends on the machine, not on a rule: how fast the disk is against the cost of a fresh
page's first touch, whether huge pages help or hurt, whether the destination is fresh memory or a pool worker's
pre-faulted arena. On the 2-core CI VM, for instance, O_DIRECT into fresh 4 KiB pages beat the mapping cold, while
the same reads into fresh huge pages ran at half the disk's speed.

``measure`` times every candidate on a slice of the checkpoint's largest file (``probe_bytes`` per candidate, cold
ones evicted before each read, the slice's page-cache state restored afterwards), into fresh memory and into a
pre-faulted buffer, interleaved ``repeats`` times. The result is cached in a JSON file under a key of the boot, the
file system's device, the device kind and the loader's threads and chunk size, so the loading experiment measures
once before its trials (``NativeLoader.prepare``) and every trial process reads the choice (``choose``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from loaders.native.mapping import map_file, populate
from loaders.native.pipeline import CudaCopyEngine, Segment, aligned_empty, populate_write, run_pipeline
from loaders.pagecache import evict_range, read_range, resident_fraction

VERSION = 2
CPU_PATHS = ("map", "direct", "buffered")
MIN_PROBE_BYTES = 8 << 20  # a smaller slice measures the call overheads, not the paths: use the default order
# A cold load larger than the probed slice takes a path through the page cache (map, buffered) only when the slice
# measured it this much faster than O_DIRECT: such a load also fills the page cache with the whole checkpoint beside
# its destination, which a slice read into an idle page cache does not show. On the CI VM the 512 MiB slice put
# buffered reads 15 % ahead of O_DIRECT into fresh 4 KiB pages (1.53 against 1.33 GB/s), and whole opt-1.3b loads
# then ran buffered at 0.57-0.89 GB/s against O_DIRECT's 0.83-1.64 (the same run) and 1.9 GB/s (a later one): the
# slice overstated buffered against O_DIRECT by 1.6-2.3x, so a lead under 1.5x is no evidence at this size.
PAGE_CACHE_MARGIN = 0.5


@dataclass(frozen=True)
class PathChoice:
    """How a load reads: ``path`` (map | direct | buffered), fresh memory on huge pages or not, and why."""

    path: str
    huge: bool = False
    source: str = "default"  # probe: the fastest measured | setting: the knobs allow only this | default: unmeasured

    def label(self, dest: str) -> str:
        """``direct→arena``, ``buffered→fresh-thp``, ``map``: the path and where its bytes land."""
        if self.path == "map":
            return "map"
        return f"{self.path}→{dest}{'-thp' if dest == 'fresh' and self.huge else ''}"


def candidates(device: str, staging: str, direct_io: str) -> tuple[str, ...]:
    """The paths the knobs allow (``staging``: auto|direct|ring|map; ``direct_io``: auto|on|off)."""
    io = {"on": ("direct",), "off": ("buffered",), "auto": ("direct", "buffered")}[direct_io]
    if device == "cuda" or staging in ("direct", "ring"):
        return io
    if staging == "map":
        return ("map",)
    return ("map", *io) if direct_io != "on" else io


def decides(allowed: Sequence[str], device: str) -> bool:
    """Whether the probe has a choice to make for a load: between paths, or, for O_DIRECT into fresh CPU memory
    (``direct_io=on``), between huge and 4 KiB pages (``device``: ``cpu``, ``cuda``, or ``arena`` for a pool
    worker's pre-faulted memory, which has no page size to choose)."""
    return len(allowed) > 1 or (device == "cpu" and tuple(allowed) == ("direct",))


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def probe_key(path: Path, device: str, threads: int, chunk_bytes: int) -> str:
    """What a measurement holds for: this boot, the file system's device, the device kind, the loader's shape."""
    return (f"v{VERSION}|{boot_id()}|{platform.release()}|dev={os.stat(path).st_dev}|{device}|threads={threads}|"
            f"chunk={chunk_bytes}")


def _slice(path: Path, nbytes: int, chunk_bytes: int) -> list[Segment]:
    size = min(os.stat(path).st_size, nbytes)
    size -= size % 4096
    return [Segment(path, off, min(chunk_bytes, size - off), off) for off in range(0, size, chunk_bytes)]


class ProbeError(RuntimeError):
    """A probe's measuring process failed (the message carries its stderr)."""


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(path: Path, device: torch.device, threads: int, chunk_bytes: int, probe_bytes: int,
            repeats: int = 3, warm_bytes: int = 64 << 20, fresh_processes: bool = True) -> dict[str, Any]:
    """Time every candidate path on the first ``probe_bytes`` of ``path`` cold (``warm_bytes`` warm: resident pages
    are mapped or copied so fast that a small slice tells them apart); GB/s per ``device/state/dest/path``, the
    median of ``repeats`` rounds, each round's candidates in a rotated order (no candidate always runs first).

    ``fresh_processes``: each cold candidate into fresh memory runs in a new interpreter started right after the
    slice's eviction, as a trial does. A process that already freed memory gets it back cheaply; a fresh one may
    not: on the CI VM huge pages faulted in the measuring process ran at 1.8 GB/s, in a trial process at 0.4."""
    cold_segs = _slice(path, probe_bytes, chunk_bytes)
    warm_segs = _slice(path, min(probe_bytes, warm_bytes), chunk_bytes)
    was_cold = resident_fraction([path], windows=64) < 0.5
    samples: dict[str, list[float]] = {}
    t_start = time.perf_counter()
    reused = aligned_empty(sum(s.length for s in cold_segs), huge=True)  # as a pool worker's arena is
    populate_write(reused)

    def mapped(segs: list[Segment]) -> None:
        mm, t = map_file(path)
        populate({path: mm}, segs, threads, touch={path: t})
        del t

    cands: list[tuple[str, list[Segment], Callable[[], float]]] = []
    for state, segs in (("cold", cold_segs), ("warm", warm_segs)):
        n = sum(s.length for s in segs)
        if device.type == "cuda":
            cands += [(f"cuda/{state}/ring/{io}", segs,
                       partial(_timed, partial(_cuda_ring, segs, device, threads, io == "direct")))
                      for io in ("direct", "buffered")]
            continue
        fresh: dict[str, Callable[[], object]] = {"map": partial(mapped, segs),
                 "direct": partial(_into_fresh, segs, n, threads, True, False),
                 "buffered": partial(_into_fresh, segs, n, threads, False, False)}
        if state == "cold":  # fresh memory on huge pages: faster where the kernel hands them out cheaply
            fresh["direct-thp"] = partial(_into_fresh, segs, n, threads, True, True)
        for kind, work in fresh.items():
            child = state == "cold" and fresh_processes
            cands.append((f"cpu/{state}/fresh/{kind}", segs,
                          partial(_in_fresh_process, kind, path, threads, chunk_bytes, n) if child
                          else partial(_timed, work)))
        for io in ("direct", "buffered"):
            cands.append((f"cpu/{state}/arena/{io}", segs,
                          partial(_timed, partial(_into, segs, reused[:n], threads, io == "direct", False))))
    try:
        for r in range(repeats):
            for name, segs, timed in cands[r % len(cands):] + cands[: r % len(cands)]:
                n = sum(s.length for s in segs)
                if name.split("/")[1] == "cold":
                    evict_range(path, 0, n)
                else:
                    read_range(path, 0, n)  # resident before a warm candidate
                samples.setdefault(name, []).append(n / timed() / 1e9)
    finally:
        if was_cold:
            evict_range(path, 0, sum(s.length for s in cold_segs))
    gbps = {k: statistics.median(v) for k, v in samples.items()}
    return {"path": str(path), "probe_bytes": sum(s.length for s in cold_segs), "repeats": repeats,
            "threads": threads, "chunk_bytes": chunk_bytes, "fresh_processes": fresh_processes,
            "probe_s": time.perf_counter() - t_start, "at": time.time(), "gbps": gbps, "samples_gbps": samples,
            "choice": path_choices(gbps)}


def _in_fresh_process(kind: str, path: Path, threads: int, chunk_bytes: int, nbytes: int) -> float:
    """Seconds one fresh-memory candidate took in a new interpreter (its own start and imports not counted)."""
    cmd = [sys.executable, "-m", "loaders.native.probe", kind, str(path), str(threads), str(chunk_bytes), str(nbytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise ProbeError(f"probing {kind} on {path} in a fresh process failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _into(segs: Sequence[Segment], dest: torch.Tensor, threads: int, direct: bool, fresh: bool) -> None:
    run_pipeline(segs, dest, threads, direct, prefault=fresh)
    int(dest[::4096].sum())  # loaded means materialized, for the probe too


def _into_fresh(segs: Sequence[Segment], nbytes: int, threads: int, direct: bool, huge: bool) -> None:
    _into(segs, aligned_empty(nbytes, huge=huge), threads, direct, True)


def _cuda_ring(segs: Sequence[Segment], device: torch.device, threads: int, direct: bool) -> None:
    dest = torch.empty(sum(s.length for s in segs), dtype=torch.uint8, device=device)
    run_pipeline(segs, dest, threads, direct, CudaCopyEngine(device, 4), ring_buffers=2 * threads)
    torch.cuda.synchronize(device)


def _with_huge(gbps: dict[str, float]) -> dict[str, float]:
    """The rates with fresh memory of the better page size: a direct read into fresh memory counts at its huge-page
    rate where that was faster (the load then asks for huge pages), and the ``-thp`` entry itself is dropped."""
    out = {k: v for k, v in gbps.items() if not k.endswith("-thp")}
    for name, rate in gbps.items():
        if name.endswith("-thp"):
            base = name.removesuffix("-thp")
            out[base] = max(out.get(base, 0.0), rate)
    return out


def path_choices(gbps: dict[str, float]) -> dict[str, Any]:
    """The fastest path per ``device/state/dest`` (and whether fresh memory should be huge)."""
    best: dict[str, tuple[str, float]] = {}
    for name, rate in _with_huge(gbps).items():
        dev, state, dest, path = name.split("/")
        for d in (dest, "arena") if path == "map" else (dest,):  # a mapping's pages are the page cache's, any dest
            key = f"{dev}/{state}/{d}"
            if key not in best or rate > best[key][1]:
                best[key] = (path, rate)
    out: dict[str, Any] = {k: v[0] for k, v in best.items()}
    thp, small = gbps.get("cpu/cold/fresh/direct-thp"), gbps.get("cpu/cold/fresh/direct")
    out["fresh_huge"] = bool(thp and small and thp > small)
    return out


class ProbeCache:
    """Measurements in one JSON file (``{key: record}``), updated under a lock and replaced atomically."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(os.path.expanduser(str(path))) if path else None

    def get(self, key: str) -> dict[str, Any] | None:
        if self.path is None:
            return None
        try:
            record = json.loads(self.path.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self.path.read_text())
                data = loaded if isinstance(loaded, dict) else {}
            data[key] = record
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)
        finally:
            os.close(lock)


def choose(allowed: Sequence[str], record: dict[str, Any] | None, device: str, state: str, dest: str,
           load_bytes: int = 0) -> PathChoice:
    """The path a load takes: the only one the knobs allow, else the fastest the probe measured for this device,
    cache state and destination, else the default order (O_DIRECT cold, the mapping when resident).

    A load of more ``load_bytes`` than the probe read is judged as the slice cannot show: cold, it takes a page-cache
    path only where that beat O_DIRECT by more than ``PAGE_CACHE_MARGIN`` (50 %), and its fresh memory stays on 4 KiB
    pages (with the prefault thread). Huge pages' first touch slows down as the kernel runs out of free ones and
    compacts memory, which a slice does not reach: on the CI VM a 512 MiB slice measured fresh huge pages 13 % faster,
    and whole 2.6 GB opt-1.3b loads then spent 1.3–3.1 s faulting them in, against 0.6–1.0 s for 4 KiB pages."""
    beyond = record is not None and load_bytes > int(record.get("probe_bytes") or 0)
    huge = bool(record and record.get("choice", {}).get("fresh_huge")) and not beyond
    if len(allowed) == 1:
        return PathChoice(allowed[0], huge and allowed[0] != "map", "setting")
    if record is not None:
        measured = record.get("gbps", {})
        gbps = {k: v for k, v in measured.items() if not k.endswith("-thp")} if beyond else _with_huge(measured)
        rates = {p: gbps.get(f"{device}/{state}/{'fresh' if p == 'map' else dest}/{p}") for p in allowed}
        known = {p: r for p, r in rates.items() if r}
        if state == "cold" and "direct" in known and beyond:
            known["direct"] *= 1 + PAGE_CACHE_MARGIN
        if known:
            best = max(known, key=lambda p: known[p])
            return PathChoice(best, huge and best == "direct" and dest == "fresh", "probe")
    order = ("direct", "map", "buffered") if state == "cold" else ("map", "buffered", "direct")
    return PathChoice(next(p for p in order if p in allowed), False, "default")


def main(argv: list[str] | None = None) -> None:
    """``python -m loaders.native.probe KIND PATH THREADS CHUNK_BYTES NBYTES``: one fresh-memory candidate (``map``,
    ``direct``, ``buffered``, ``direct-thp``) in this new process; prints the seconds it took."""
    kind, path, threads, chunk_bytes, nbytes = (argv or sys.argv[1:])[:5]
    segs = _slice(Path(path), int(nbytes), int(chunk_bytes))
    n, t = sum(s.length for s in segs), int(threads)
    if kind == "map":
        fm, tensor = map_file(Path(path))
        fn: Callable[[], object] = partial(populate, {Path(path): fm}, segs, t, touch={Path(path): tensor})
    else:
        fn = partial(_into_fresh, segs, n, t, kind.startswith("direct"), kind.endswith("-thp"))
    print(_timed(fn))


if __name__ == "__main__":
    main()
