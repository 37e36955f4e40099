"""``loader=native``: tensors as views of one destination allocation (or, on CPU, of private file mappings), threaded
chunked reads, DRAM and remote tiers."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import ClassVar

import torch

from loaders.base import BaseLoader, LoadResult, UnsupportedCheckpointError
from loaders.native import probe as path_probe
from loaders.native import writebehind
from loaders.native.format import ALIGNMENT, MAX_INDEX_BYTES, ChunkChecksumError, NativeFormatError, member
from loaders.native.integrity import (
    SOURCE,
    VERIFIED,
    current,
    forget_verified,
    mark_verified,
    read_source,
    source_json,
    verified_record,
)
from loaders.native.pathchoice import PathChooser, ProbeOptions, probe_options
from loaders.native.plan import Plan, Planner, detect_format, record_checks
from loaders.native.reads import PlanReader
from loaders.native.remote import is_url, url_key
from loaders.native.remote_load import RemoteLoad
from loaders.native.tiers import DramTier, TierCapacityError, clean_dead_temps

__all__ = ["VERIFIED", "NativeLoader", "detect_format"]

log = logging.getLogger("coldstart.native")

FORMATS = ("auto", "native", "safetensors", "sllm")
DIRECT_IO = ("auto", "on", "off")
STAGING = ("auto", "direct", "ring", "map")
VERIFY = ("auto", "always", "never")


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
        self.probe = probe_options(probe)
        self.probes = path_probe.ProbeCache(self.probe.cache)
        self._warned_small_pages = False
        # the parts a load goes through, built once from the settings each reads (configs never change after start)
        self.planner = Planner(format, chunk_bytes, verify, self.max_index_bytes, self.verify_max_age_s)
        self.reader = PlanReader(threads, copy_streams, ring_bytes)
        self.chooser = PathChooser(self.reader, staging, direct_io, self.probe, self.probes)
        self.remote = RemoteLoad(self.planner, self.reader, self.ssd_root, remote_retries, remote_timeout_s, staging,
                                 self.remote_write_behind, remote_to_dram, self.write_behind)

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

    def unstage_from_dram(self, checkpoint_dir: Path) -> None:
        """Make sure the checkpoint is not served from the DRAM tier (for the cold and warm states)."""
        if self.dram is not None:
            self.dram.remove(self.tier_key(checkpoint_dir))

    # -- loading ---------------------------------------------------------------------------------------------
    def _plan(self, directory: Path, verify: str | None = None) -> Plan:
        return self.planner.plan(directory, verify)

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
        """Fetch a URL into memory and the SSD tier (``loaders/native/remote_load.py``); with ``remote_to_dram``,
        stage the fetched copy into the DRAM tier as well (a failure to do so leaves the load as it is)."""
        result = self.remote.load(url, local, device)
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
        if is_url(checkpoint_dir) or not self.chooser.measures(device):
            return None
        plan = self._plan(Path(checkpoint_dir), verify="never")
        return self.chooser.record(plan, device, self.probe.bytes, use_quick=False)

    def _load_from(self, directory: Path, device: torch.device, tier: str, direct: bool | None) -> LoadResult:
        t0 = time.perf_counter()
        plan = self._plan(directory)
        ring = self.staging == "ring" or device.type == "cuda"
        try:
            if device.type == "cpu" and tier == "dram" and self.staging in ("auto", "map"):
                result = self.reader.map(plan, tier, t0, cold=False)  # tmpfs: no O_DIRECT, and a copy only costs
                result.info["path_source"] = "dram tier"
            else:
                result = self.chooser.load(plan, tier, t0, device, ring, direct)
        except ChunkChecksumError:
            forget_verified(directory)  # whatever was trusted before: the next load verifies every chunk
            raise
        record_checks(directory, plan)
        result.phases_s["verified"] = float(plan.verifying)
        result.phases_s["verify_sampled_chunks"] = float(plan.sampled)
        return result
