"""What the native loader trusts about a checkpoint directory: file fingerprints, the verified marker, chunk sums.

A *fingerprint* names every file a load reads (the index and the data files, plus recorded chunk sums) with its
size, mtime, ctime, inode and device, and the index's own xxh3 digest. It keys trust twice: ``verify=auto``
skips hashing only while the fingerprint equals the one stored at the last verification (``VERIFIED``; a
restored mtime still changes the ctime, which no user can set), and a DRAM-tier entry is served only while its
source's fingerprint equals the one stored when it was staged (``SOURCE``). Formats without checksums of their own
(ServerlessLLM, safetensors) fetched from a remote store get chunk sums computed as the bytes arrive (``CHUNKS``,
beside the SSD-tier copy), so their later loads are verified like native ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xxhash

from loaders.native.format import MAX_INDEX_BYTES, NativeFormatError, member, read_member

VERIFIED = ".coldstart-verified.json"  # {"fingerprint": …, "at": unix time, "cursor": next chunk to sample}
SOURCE = ".coldstart-source.json"  # in a DRAM-tier entry: the fingerprint of the directory it was staged from
CHUNKS = ".coldstart-chunks.json"  # {"chunk_bytes": n, "files": {name: [xxh3-64 hex per chunk]}}

Fingerprint = dict[str, Any]


def stamp(name: str, st: os.stat_result) -> list[Any]:
    return [name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def fingerprint(fmt: str, index: tuple[str, os.stat_result, bytes] | None,
                files: Sequence[tuple[str, os.stat_result]],
                sums: tuple[str, os.stat_result, bytes] | None = None) -> Fingerprint:
    """The fingerprint of a planned load: ``index`` and ``sums`` as (name, stat, bytes), ``files`` as (name, stat)."""
    def digested(f: tuple[str, os.stat_result, bytes] | None) -> list[Any] | None:
        return None if f is None else [*stamp(f[0], f[1]), xxhash.xxh3_64_hexdigest(f[2])]

    return {"format": fmt, "index": digested(index), "files": [stamp(n, st) for n, st in files],
            "sums": digested(sums)}


def current(directory: Path, stored: Fingerprint, max_index_bytes: int = MAX_INDEX_BYTES) -> Fingerprint | None:
    """``directory``'s fingerprint now, over the files ``stored`` names (None when one is gone or unsafe). Cheap: a
    stat per file and one read of the index, no parsing (the same index digest implies the same file list)."""
    try:
        def digested(rec: list[Any] | None) -> tuple[str, os.stat_result, bytes] | None:
            if rec is None:
                return None
            raw, _, st = read_member(directory, rec[0], max_index_bytes)
            return rec[0], st, raw

        files = [(rec[0], member(directory, rec[0])[1]) for rec in stored["files"]]
        if stored["format"] == "safetensors" and sorted(p.name for p in Path(directory).glob("*.safetensors")) \
                != [rec[0] for rec in stored["files"]]:
            return None  # a shard came or went
        return fingerprint(stored["format"], digested(stored["index"]), files, digested(stored.get("sums")))
    except (NativeFormatError, OSError, KeyError, TypeError, IndexError):
        return None


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(MAX_INDEX_BYTES))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc: Any) -> bool:
    """Atomically (temp file, rename); False where the directory is read-only."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def verified_record(directory: Path, fp: Fingerprint) -> dict[str, Any] | None:
    """The verified marker when it was written for exactly this fingerprint ({"at", "cursor"}), else None."""
    rec = _read_json(Path(directory) / VERIFIED)
    if not isinstance(rec, dict) or rec.get("fingerprint") != fp:
        return None
    at, cursor = rec.get("at"), rec.get("cursor")
    return {"at": float(at) if isinstance(at, int | float) else 0.0,
            "cursor": int(cursor) if isinstance(cursor, int) and not isinstance(cursor, bool) else 0}


def mark_verified(directory: Path, fp: Fingerprint, cursor: int = 0) -> None:
    """Record that the files of ``fp`` passed their chunk checksums now (a read-only directory: verify next time)."""
    _write_json(Path(directory) / VERIFIED, {"fingerprint": fp, "at": time.time(), "cursor": cursor})


def forget_verified(directory: Path) -> None:
    with contextlib.suppress(OSError):
        (Path(directory) / VERIFIED).unlink()


def read_source(entry: Path) -> Fingerprint | None:
    doc = _read_json(Path(entry) / SOURCE)
    return doc if isinstance(doc, dict) else None


def source_json(fp: Fingerprint) -> bytes:
    return json.dumps(fp).encode()


def read_chunk_sums(directory: Path, max_bytes: int = MAX_INDEX_BYTES
                    ) -> tuple[int, dict[str, list[str]], tuple[str, os.stat_result, bytes]] | None:
    """Recorded chunk sums (chunk bytes, per-file digests, and the record as (name, stat, bytes)), or None."""
    if not os.path.lexists(Path(directory) / CHUNKS):
        return None
    raw, _, st = read_member(directory, CHUNKS, max_bytes)
    try:
        doc = json.loads(raw)
        chunk_bytes, files = int(doc["chunk_bytes"]), doc["files"]
        if chunk_bytes <= 0 or not all(isinstance(v, list) and all(isinstance(d, str) for d in v)
                                       for v in files.values()):
            raise ValueError("malformed")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # an unreadable record is no record: the load goes unverified, as without one
    return chunk_bytes, files, (CHUNKS, st, raw)


def write_chunk_sums(directory: Path, chunk_bytes: int, sums: dict[str, list[str]]) -> None:
    _write_json(Path(directory) / CHUNKS, {"chunk_bytes": chunk_bytes, "files": sums})
