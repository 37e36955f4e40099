"""The DRAM tier: a host-memory checkpoint cache shared by processes (files under /dev/shm), bounded, LRU.

Entries are checkpoint directories ``<root>/<key>/`` (mode 0700) holding exactly the files a load reads, copied
as regular files of mode 0600. Insertion copies into a hidden temp directory and renames it into place (atomic:
readers never see half an entry). Readers hold a shared ``flock`` on the entry's lock file for the whole load;
eviction takes the tier lock, picks least-recently-used entries and removes only those whose lock it can take
exclusively, so an entry being read is never evicted.

Staging asks the kernel to move each data file onto 2 MiB pages (``hugetmpfs.collapse``, no root needed where the
kernel allows it) and records how many bytes got there in the entry's ``.huge_pages.json``: a hot load then maps it
2 MiB at a time, which is what makes the hot state faster than the warm one on a default ``/dev/shm``.

A temp directory is owned through an exclusive ``flock`` on ``.locks/<temp name>.lock``, taken before the directory
is made: a process that dies while staging (SIGKILL) drops it, and the next tier start or insertion removes
that temp (``clean_dead_temps``). Until then its bytes count toward the capacity. The SSD tier's remote fetches
use the same temps.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from loaders.native.format import open_regular
from loaders.native.hugetmpfs import collapse, huge_pages

LOCKS = ".locks"
STAMP = ".last_used"
HUGE_RECORD = ".huge_pages.json"  # {"bytes": data bytes, "huge_bytes": bytes on 2 MiB pages} when staged
COLLAPSE_MIN_BYTES = 2 << 20


class TierCapacityError(Exception):
    """The entry does not fit in the tier even after evicting everything evictable."""


def _touch(stamp: Path) -> None:
    """Mark use with an exact timestamp (file systems stamp with a coarse clock that ties close uses)."""
    stamp.touch()
    now = time.time_ns()
    os.utime(stamp, ns=(now, now))


def _dir_bytes(path: Path, hidden: bool = False) -> int:
    total = 0
    with contextlib.suppress(OSError):  # a temp removed while counted
        for p in path.iterdir():
            with contextlib.suppress(OSError):
                st = p.lstat()
                if stat.S_ISREG(st.st_mode) and (hidden or not p.name.startswith(".")):
                    total += st.st_size
    return total


def _is_temp(name: str) -> bool:
    return name.startswith(".") and (".tmp-" in name or ".evicting-" in name)


@contextlib.contextmanager
def temp_entry(root: Path, key: str) -> Iterator[Path]:
    """A hidden temp directory (mode 0700) under ``root`` for an entry being written, owned while the context is open
    (``clean_dead_temps`` removes it once its owner died). On exit it is removed unless it was renamed away."""
    locks = Path(root) / LOCKS
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock = locks / f"{name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the directory exists: no cleaner can take it for a dead one
        tmp = Path(root) / name
        tmp.mkdir(mode=0o700)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def clean_dead_temps(root: Path) -> list[str]:
    """Remove temp directories under ``root`` whose owner died (its lock is free); the names removed."""
    removed: list[str] = []
    root = Path(root)
    try:
        names = [p.name for p in root.iterdir() if _is_temp(p.name)]
    except OSError:
        return removed
    if not names:
        return removed
    (root / LOCKS).mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in names:
        lock = root / LOCKS / f"{name}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive and writing
            shutil.rmtree(root / name, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(name)
        finally:
            os.close(fd)
    return removed


def _copy_file(src: Path, dst: Path) -> None:
    """Copy a checked checkpoint file as a new regular file of mode 0600 (never through a link, never a FIFO)."""
    fin = open_regular(src)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            size, done = os.fstat(fin).st_size, 0
            while done < size:
                n = os.sendfile(fout, fin, done, min(size - done, 1 << 30))
                if n == 0:
                    break
                done += n
        finally:
            os.close(fout)
    finally:
        os.close(fin)


class DramTier:
    """A capacity-bounded directory of checkpoints in host memory (tmpfs), shared across processes."""

    def __init__(self, root: str | Path = "/dev/shm/coldstart-dram", capacity_bytes: int = 8 << 30,
                 collapse: bool = True) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"dram capacity_bytes must be > 0, got {capacity_bytes}")
        self.root = Path(root)
        self.capacity_bytes = int(capacity_bytes)
        self.collapse = bool(collapse)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / LOCKS).mkdir(mode=0o700, exist_ok=True)
        clean_dead_temps(self.root)  # what a killed stager left behind
        # 4 KiB pages make populating a hot load's mapping cost ~0.1 s per GB (hugetmpfs.py says why and mounts one)
        self.huge_pages = huge_pages(self.root)

    def path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise ValueError(f"tier key {key!r} must be a plain name")
        return self.root / key

    @contextlib.contextmanager
    def _lock(self, name: str, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(self.root / LOCKS / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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

    def temp_bytes(self) -> int:
        """Bytes held by temp directories (entries being staged, or left by a dead stager until cleaned)."""
        return sum(_dir_bytes(p, hidden=True) for p in self.root.iterdir() if p.is_dir() and _is_temp(p.name))

    def used_bytes(self) -> int:
        return sum(b for _, _, b in self.entries()) + self.temp_bytes()

    def insert(self, key: str, src: Path, files: Sequence[tuple[Path, str]] | None = None,
               extra: dict[str, bytes] | None = None) -> Path:
        """Copy ``files`` ((path to read, name in the entry) pairs; default: the regular files directly in ``src``)
        into the tier as ``key``, plus ``extra`` small files (name → bytes), evicting LRU entries; return its path.
        A full file system is a ``TierCapacityError`` and leaves nothing behind."""
        dst = self.path(key)
        if dst.exists():
            return dst
        if files is None:
            files = [(p, p.name) for p in sorted(Path(src).iterdir())
                     if stat.S_ISREG(p.lstat().st_mode) and not p.name.startswith(".")]
        need = sum(p.stat().st_size for p, _ in files) + sum(len(b) for b in (extra or {}).values())
        if need > self.capacity_bytes:
            raise TierCapacityError(f"{src} needs {need / 1e9:.2f} GB but the DRAM tier holds at most "
                                    f"{self.capacity_bytes / 1e9:.2f} GB; raise dram_capacity_bytes")
        with self._lock(".tier.lock", exclusive=True):
            if dst.exists():
                return dst
            clean_dead_temps(self.root)
            self._evict_for(need)
            try:
                with temp_entry(self.root, key) as tmp:
                    data_bytes = huge_bytes = 0
                    for path, name in files:
                        _copy_file(path, tmp / name)
                        size = (tmp / name).stat().st_size
                        if self.collapse and size >= COLLAPSE_MIN_BYTES:
                            data_bytes += size
                            huge_bytes += collapse(tmp / name)
                    (tmp / HUGE_RECORD).write_text(json.dumps({"bytes": data_bytes, "huge_bytes": huge_bytes}))
                    for name, data in (extra or {}).items():
                        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                        with os.fdopen(fd, "wb") as f:
                            f.write(data)
                    _touch(tmp / STAMP)
                    tmp.rename(dst)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise TierCapacityError(f"DRAM tier at {self.root}: the file system is full staging {src} "
                                            f"({need / 1e9:.2f} GB); nothing partial was kept. Free memory in "
                                            f"{self.root} or lower dram_capacity_bytes to what it holds") from exc
                raise
        return dst

    @staticmethod
    def huge_fraction(entry: Path) -> float | None:
        """The fraction of an entry's large files that staging got onto 2 MiB pages (None: not recorded)."""
        try:
            rec = json.loads((entry / HUGE_RECORD).read_text())
            return float(rec["huge_bytes"]) / float(rec["bytes"]) if rec["bytes"] else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

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

    def remove(self, key: str, keep: Callable[[Path], bool] | None = None) -> bool:
        """Drop one entry (waits for its readers); True if it was there. ``keep(path)`` decides under the entry's
        lock: an entry another process staged meanwhile (fresh again) is kept."""
        with self._lock(".tier.lock", exclusive=True), self._lock(f"{key}.lock", exclusive=True):
            path = self.path(key)
            if not path.exists() or (keep is not None and keep(path)):
                return False
            victim = self.root / f".{key}.evicting-{uuid.uuid4().hex[:8]}"
            path.rename(victim)
            shutil.rmtree(victim, ignore_errors=True)
            return True

    def clear(self) -> None:
        for _, key, _ in self.entries():
            with self._lock(f"{key}.lock", exclusive=True):
                shutil.rmtree(self.root / key, ignore_errors=True)

