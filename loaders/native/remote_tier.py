"""Fetching a remote checkpoint: its small metadata files first, then a local skeleton the pipeline fills.

The skeleton is a hidden temp directory beside the SSD tier's entries: metadata files written whole, every data
file created at its remote size (sparse), safetensors headers fetched so the plan can be made locally. The
pipeline then range-reads each chunk from the server into the destination (or the pinned ring) and writes the
same bytes into the skeleton; the loader renames the skeleton into the SSD tier only after every byte arrived,
was verified and fsynced, so no partial entry is ever visible.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

from loaders.native.format import INDEX, UnsafePartitionNameError, parse_index
from loaders.native.remote import RemoteDirectory, RemoteError, RemoteNotFoundError, RemoteShortReadError
from loaders.native.sllm import DATA_PREFIX, SLLM_INDEX

MANIFEST = "coldstart_manifest.json"
ST_INDEX = "model.safetensors.index.json"
METADATA = (INDEX, SLLM_INDEX, ST_INDEX, MANIFEST, "config.json")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_SLLM_FILES = 10_000


class RemoteIndexError(RemoteError):
    """The remote directory's metadata is unusable (no known index, unsafe file names, bad JSON)."""


def _safe(name: object, url: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise UnsafePartitionNameError(f"{url}: file name {name!r} is not a plain file name (refused)")
    return name


def _data_names(remote: RemoteDirectory, meta: dict[str, bytes]) -> list[str]:
    url = remote.url
    try:
        if INDEX in meta:
            return [p.name for p in parse_index(meta[INDEX], f"{url}/{INDEX}").partitions]
        if MANIFEST in meta:
            return [_safe(n, url) for n in json.loads(meta[MANIFEST])["files"]]
        if ST_INDEX in meta:
            return sorted({_safe(n, url) for n in json.loads(meta[ST_INDEX])["weight_map"].values()})
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteIndexError(f"{url}: unreadable checkpoint metadata: {exc}") from exc
    if SLLM_INDEX in meta:
        names: list[str] = []
        while remote.exists(f"{DATA_PREFIX}{len(names)}") and len(names) < MAX_SLLM_FILES:
            names.append(f"{DATA_PREFIX}{len(names)}")
        return names
    if remote.exists("model.safetensors"):
        return ["model.safetensors"]
    raise RemoteNotFoundError(f"{url}: no checkpoint there (none of {', '.join(METADATA)} nor model.safetensors); "
                              "check the URL")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write every byte (a seam the tests use to simulate a full disk)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def make_skeleton(remote: RemoteDirectory, tmp: Path) -> list[Path]:
    """Fetch metadata into ``tmp``, create its data files at their remote sizes; return the data files."""
    meta: dict[str, bytes] = {}
    for name in METADATA:
        try:
            meta[name] = remote.get(name)
        except RemoteNotFoundError:
            continue
    names = _data_names(remote, meta)
    for name, data in meta.items():
        (tmp / name).write_bytes(data)
    files = []
    for name in names:
        size = remote.size(name)
        path = tmp / name
        with open(path, "wb") as f:
            f.truncate(size)
            if name.endswith(".safetensors"):  # the plan reads the header locally
                head = bytearray(8)
                remote.read_into(name, 0, memoryview(head))
                (n,) = struct.unpack("<Q", head)
                if n > min(size, 100 << 20):
                    raise RemoteShortReadError(f"{remote.url}/{name}: header length {n} exceeds the file ({size})")
                header = bytearray(n)
                remote.read_into(name, 8, memoryview(header))
                f.write(head + header)
        files.append(path)
    return files


def publish(tmp: Path, dst: Path, files: list[Path]) -> Path:
    """fsync the skeleton and rename it into place (a concurrent fetch that finished first wins)."""
    for path in [*files, *(p for p in tmp.iterdir() if p.is_file() and p not in files)]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        tmp.rename(dst)
    except OSError:
        if not dst.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fd = os.open(dst.parent, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return dst
