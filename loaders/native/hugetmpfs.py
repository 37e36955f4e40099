"""Huge pages for the DRAM tier: is a directory on a tmpfs that allocates 2 MiB pages, and mounting one.

A hot load maps the DRAM tier's files privately. On a tmpfs with 4 KiB pages (``/dev/shm`` by default: its mount has
no ``huge=`` option and ``shmem_enabled`` does not force one) populating that mapping sets one page-table entry per
4 KiB, 640k for a 2.6 GB model: 0.2–0.34 s on the 2-core CI VM, which alone costs a hot load its target against
memcpy. On a tmpfs mounted with ``huge=always`` the same population maps 2 MiB at a time (2 ms for 2.6 GB there).
Mounting needs root, so it is an explicit step (``make dram-tier``), never done behind a load:

    python -m loaders.native.hugetmpfs mount [--path /dev/shm/coldstart-dram] [--size 16G]
    python -m loaders.native.hugetmpfs status|unmount [--path ...]

Without root the tier still gets huge pages where the kernel allows it: ``collapse`` asks for them file by file with
``madvise(MADV_COLLAPSE)`` (Linux ≥ 6.1), which copies a tmpfs file's 4 KiB pages into 2 MiB folios whatever the
mount's ``huge=`` option, unless ``shmem_enabled`` is ``deny`` (or THP is compiled out). The tier does it when it
stages an entry (``DramTier.insert``), so every later hot load maps the entry 2 MiB at a time: on the CI VM that made
a hot opt-125m 1.3–2 ms of faults against 2.6–2.9 ms for the same bytes warm in the page cache.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

MADV_COLLAPSE = 25  # Linux ≥ 6.1 uapi value; Python 3.11's mmap lacks the name

DEFAULT_PATH = "/dev/shm/coldstart-dram"
HUGE_OPTIONS = ("always", "within_size")  # "advise" needs madvise on a mapping; the tier writes with write(2)
SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")


class MountError(RuntimeError):
    """The huge-page tmpfs could not be mounted (not root, a non-empty directory, or mount(8) failed)."""


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_of(path: str | Path, mounts: str | None = None) -> tuple[str, str, list[str]]:
    """(mount point, fs type, options) of the mount holding ``path`` (the longest matching mount point)."""
    text = mounts if mounts is not None else Path("/proc/mounts").read_text()
    target = os.path.realpath(path)
    best: tuple[str, str, list[str]] = ("/", "", [])
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = _unescape(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):  # later lines win ties: the last mount on a point is visible
            best = (point, fields[2], fields[3].split(","))
    return best


def _selected(text: str) -> str:
    """The bracketed choice of a sysfs selector such as ``always within_size advise [never] deny force``."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return ""


def huge_pages(path: str | Path, mounts: str | None = None, shmem_enabled: str | None = None) -> bool:
    """Whether files written under ``path`` get 2 MiB pages: a tmpfs mounted ``huge=always|within_size`` (or any
    tmpfs while ``shmem_enabled`` is ``force``; none while it is ``deny``). Other file systems: False."""
    _, fstype, options = mount_of(path, mounts)
    if fstype != "tmpfs":
        return False
    if shmem_enabled is None:
        try:
            shmem_enabled = SHMEM_ENABLED.read_text()
        except OSError:
            shmem_enabled = ""
    forced = _selected(shmem_enabled)
    if forced in ("force", "deny"):
        return forced == "force"
    huge = next((o.split("=", 1)[1] for o in options if o.startswith("huge=")), "never")
    return huge in HUGE_OPTIONS


def collapse(path: str | Path) -> int:
    """Move a tmpfs file's pages into 2 MiB folios (``MADV_COLLAPSE``, no root needed); the bytes now on huge pages
    (measured: how much of a fresh mapping of the file is mapped 2 MiB at a time). Best effort: 0 where the kernel
    refuses (older than 6.1, THP off, ``shmem_enabled`` = ``deny``) or memory is too fragmented for 2 MiB pages."""
    from loaders.native.mapping import HUGE, map_file, pmd_mapped_bytes

    fm, tensor = map_file(Path(path), shared=True)
    if fm is None or len(fm) < HUGE:
        return 0
    with contextlib.suppress(OSError):  # EINVAL: not allowed here; EAGAIN/ENOMEM: some ranges stayed small
        fm.madvise(MADV_COLLAPSE, 0, len(fm) - len(fm) % HUGE)
    int(tensor[::HUGE].sum())  # map each 2 MiB range once, so smaps can tell how it is mapped
    return pmd_mapped_bytes(fm)  # the mapping goes with ``fm`` and ``tensor``


def mount(path: str | Path = DEFAULT_PATH, size: str = "16G") -> str:
    """Mount a ``huge=always`` tmpfs at ``path`` (created if missing); a no-op where one is already there."""
    target = Path(path)
    if huge_pages(target):
        return f"{target}: already on a huge-page tmpfs"
    if os.geteuid() != 0:
        raise MountError(f"mounting a tmpfs at {target} needs root: run `sudo {sys.executable} -m "
                         f"loaders.native.hugetmpfs mount --path {target} --size {size}` (or `sudo make dram-tier`)")
    target.mkdir(parents=True, exist_ok=True)
    if any(p for p in target.iterdir() if p.name != ".locks"):
        raise MountError(f"{target} holds DRAM-tier entries that the mount would hide; remove them first "
                         f"(rm -rf {target}/*) or choose another --path")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"huge=always,size={size},mode=1777", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise MountError(f"mount -t tmpfs -o huge=always,size={size} tmpfs {target} failed: {proc.stderr.strip()}")
    if not huge_pages(target):
        raise MountError(f"{target} is mounted but the kernel gives it no huge pages "
                         f"({SHMEM_ENABLED} says {SHMEM_ENABLED.read_text().strip()!r})")
    return f"{target}: mounted a huge-page tmpfs of at most {size}"


def unmount(path: str | Path = DEFAULT_PATH, lazy: bool = False) -> str:
    """Unmount the tier's tmpfs; ``lazy`` detaches it now and frees it once no process maps its files."""
    target = Path(path)
    if mount_of(target)[0] != os.path.realpath(target):
        return f"{target}: nothing mounted there"
    proc = subprocess.run(["umount", *(["--lazy"] if lazy else []), str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MountError(f"umount {target} failed: {proc.stderr.strip()} (a process still maps a tier file: "
                         "stop it, or pass --lazy)")
    return f"{target}: unmounted (its DRAM-tier entries are gone)"


def status(path: str | Path = DEFAULT_PATH) -> str:
    point, fstype, options = mount_of(path)
    pages = "2 MiB pages" if huge_pages(path) else "4 KiB pages"
    return f"{path}: on {fstype or '?'} mounted at {point} ({','.join(options)}): {pages}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("mount", "unmount", "status"))
    parser.add_argument("--path", default=DEFAULT_PATH, help="the DRAM tier's directory (loader.dram_dir)")
    parser.add_argument("--size", default="16G", help="the mount's capacity (tmpfs allocates only what is written)")
    parser.add_argument("--lazy", action="store_true", help="unmount: detach now, free once nothing maps it")
    args = parser.parse_args(argv)
    try:
        if args.action == "mount":
            print(mount(args.path, args.size))
        elif args.action == "unmount":
            print(unmount(args.path, args.lazy))
        print(status(args.path))
    except MountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
