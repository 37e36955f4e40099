"""The DRAM tier: a host-memory checkpoint cache shared by processes (files under /dev/shm), bounded, LRU.

Entries are whole checkpoint directories ``<root>/<key>/``. Insertion copies into a hidden temp directory and
renames it into place (atomic: readers never see half an entry). Readers hold a shared ``flock`` on the entry's
lock file for the whole load; eviction takes the tier lock, picks least-recently-used entries and removes only
those whose lock it can take exclusively, so an entry being read is never evicted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from loaders.native.hugetmpfs import huge_pages

LOCKS = ".locks"
STAMP = ".last_used"


class TierCapacityError(Exception):
    """The entry does not fit in the tier even after evicting everything evictable."""


def _touch(stamp: Path) -> None:
    """Mark use with an exact timestamp (file systems stamp with a coarse clock that ties close uses)."""
    stamp.touch()
    now = time.time_ns()
    os.utime(stamp, ns=(now, now))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


class DramTier:
    """A capacity-bounded directory of checkpoints in host memory (tmpfs), shared across processes."""

    def __init__(self, root: str | Path = "/dev/shm/coldstart-dram", capacity_bytes: int = 8 << 30) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"dram capacity_bytes must be > 0, got {capacity_bytes}")
        self.root = Path(root)
        self.capacity_bytes = int(capacity_bytes)
        (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
        # 4 KiB pages make populating a hot load's mapping cost ~0.1 s per GB (hugetmpfs.py says why and mounts one)
        self.huge_pages = huge_pages(self.root)

    def path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise ValueError(f"tier key {key!r} must be a plain name")
        return self.root / key

    @contextlib.contextmanager
    def _lock(self, name: str, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(self.root / LOCKS / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[Path | None]:
        """Hold ``key`` against eviction while it is read; yields its directory, or None if absent."""
        with self._lock(f"{key}.lock", exclusive=False):
            path = self.path(key)
            if not path.exists():
                yield None
                return
            _touch(path / STAMP)
            yield path

    def entries(self) -> list[tuple[float, str, int]]:
        """(last used, key, bytes) of every entry, least recently used first."""
        out = []
        for p in self.root.iterdir():
            if p.is_dir() and not p.name.startswith("."):
                stamp = p / STAMP
                used = stamp.stat().st_mtime if stamp.exists() else p.stat().st_mtime
                out.append((used, p.name, _dir_bytes(p)))
        return sorted(out)

    def used_bytes(self) -> int:
        return sum(b for _, _, b in self.entries())

    def insert(self, key: str, src: Path) -> Path:
        """Copy checkpoint directory ``src`` into the tier as ``key`` (evicting LRU entries); return its path."""
        dst = self.path(key)
        if dst.exists():
            return dst
        need = _dir_bytes(src)
        if need > self.capacity_bytes:
            raise TierCapacityError(f"{src} needs {need / 1e9:.2f} GB but the DRAM tier holds at most "
                                    f"{self.capacity_bytes / 1e9:.2f} GB; raise dram_capacity_bytes")
        with self._lock(".tier.lock", exclusive=True):
            if dst.exists():
                return dst
            self._evict_for(need)
            tmp = self.root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                for f in sorted(src.iterdir()):
                    if f.is_file():
                        shutil.copyfile(f, tmp / f.name)
                _touch(tmp / STAMP)
                tmp.rename(dst)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return dst

    def _evict_for(self, need: int) -> None:
        used = self.used_bytes()
        for _, key, size in self.entries():
            if used + need <= self.capacity_bytes:
                return
            with self._lock(f"{key}.lock", exclusive=True, blocking=False) as got:
                if not got:
                    continue  # being read right now: never evicted
                victim = self.root / f".{key}.evicting-{uuid.uuid4().hex[:8]}"
                (self.root / key).rename(victim)  # disappears atomically for new readers
                shutil.rmtree(victim, ignore_errors=True)
                used -= size
        if used + need > self.capacity_bytes:
            raise TierCapacityError(f"DRAM tier at {self.root}: {need / 1e9:.2f} GB needed, "
                                    f"{(self.capacity_bytes - used) / 1e9:.2f} GB free after evicting every entry "
                                    "not being read; raise dram_capacity_bytes or wait")

    def remove(self, key: str) -> bool:
        """Drop one entry (waits for its readers); True if it was there."""
        with self._lock(".tier.lock", exclusive=True), self._lock(f"{key}.lock", exclusive=True):
            path = self.path(key)
            if not path.exists():
                return False
            victim = self.root / f".{key}.evicting-{uuid.uuid4().hex[:8]}"
            path.rename(victim)
            shutil.rmtree(victim, ignore_errors=True)
            return True

    def clear(self) -> None:
        for _, key, _ in self.entries():
            with self._lock(f"{key}.lock", exclusive=True):
                shutil.rmtree(self.root / key, ignore_errors=True)

