"""What the checkpoint store derives from a real model's files, keyed by the source's fingerprint: the manifest of
the files read in place, and the other formats a run needs, converted once.

    <store root>/sources/<name>-<path hash>-<fingerprint>/coldstart_manifest.json     the in-place manifest
    <store root>/<name>-<path hash>-<dtype>-<format>-<fingerprint>/                   a conversion (its own manifest)

The user's directory is only read. A changed file changes the fingerprint, so the next run computes a new manifest
and new conversions and removes the stale ones of the same directory. Conversions stream tensor by tensor through
the store's writers (temp directory, fsync, rename); a cast to another dtype happens there and is recorded.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xxhash

from harness.checkpoints import (
    DTYPE_NAMES,
    MANIFEST,
    MANIFEST_VERSION,
    Checkpoint,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointStore,
    open_checkpoint,
)
from harness.realweights import TensorRecord, WeightReader, hash_records, write_json_atomic
from harness.sources import ModelSource
from harness.zoo import ModelSpec, TensorSpec

SOURCES = "sources"  # under the store's root: one manifest directory per source fingerprint
GENERATOR = "source"  # the manifest's "generator" for checkpoints that hold a real model's values


def source_key(name: str, source: ModelSource) -> str:
    """A cache name for one source directory: its model name (readable) and a hash of its path (identifying)."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "model"
    return f"{safe}-{xxhash.xxh3_64_hexdigest(str(source.path).encode())[:8]}"


def _drop_stale(parent: Path, prefix: str, keep: Path) -> None:
    """Remove what earlier fingerprints of the same source left under ``parent`` (never ``keep``)."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.name.startswith(prefix) and p != keep and not p.name.startswith("."):
            shutil.rmtree(p, ignore_errors=True)


def in_place(store: CheckpointStore, name: str, source: ModelSource, records: list[TensorRecord], dtype: str,
             fingerprint: str, progress: bool = True, threads: int = 2) -> Checkpoint:
    """The source's own files as a checkpoint, with the manifest cached for ``fingerprint`` (computed if absent)."""
    key = source_key(name, source)
    mdir = store.root / SOURCES / f"{key}-{fingerprint}"
    mfile = mdir / MANIFEST
    if mfile.exists():
        try:
            ckpt = open_checkpoint(source.path, mfile)
            if ckpt.manifest.get("source", {}).get("fingerprint") == fingerprint:
                return ckpt
        except CheckpointError:
            pass  # unreadable or out of date: computed again below
    digests, timing = hash_records(source, records, threads=threads, progress=progress)
    manifest = {
        "version": MANIFEST_VERSION, "generator": GENERATOR, "model": name, "dtype": dtype, "format": source.format,
        "source": {**source.describe(), "fingerprint": fingerprint},
        "total_bytes": sum(r.nbytes for r in records),
        "files": {f: source.resolved(f)[1].st_size for f in source.weights},
        "tensors": {r.name: {"dtype": DTYPE_NAMES.get(r.dtype, str(r.dtype)), "shape": list(r.shape),
                             "nbytes": r.nbytes, "file": r.file, "xxh3_64": digests[r.name]} for r in records},
        "timing": timing,
    }
    write_json_atomic(mfile, manifest)
    _drop_stale(store.root / SOURCES, f"{key}-", mdir)
    return open_checkpoint(source.path, mfile)


@dataclass
class RealValues:
    """The store writers' values from a real model's files (``harness.checkpoints.TensorValues``), cast to each
    spec's dtype piece by piece; one reader, opened on first use."""

    source: ModelSource
    records: dict[str, TensorRecord]
    provenance: dict[str, Any]
    _reader: WeightReader | None = field(default=None, repr=False)

    def _rec(self, ts: TensorSpec) -> TensorRecord:
        if self._reader is None:
            self._reader = WeightReader(self.source)
        return self.records[ts.name]

    def chunks(self, ts: TensorSpec) -> Iterator[torch.Tensor]:
        rec = self._rec(ts)
        assert self._reader is not None
        return self._reader.chunks(rec, ts.dtype)

    def tensor(self, ts: TensorSpec) -> torch.Tensor:
        rec = self._rec(ts)
        assert self._reader is not None
        return self._reader.tensor(rec, ts.dtype)

    def describe(self) -> dict[str, Any]:
        return dict(self.provenance)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def conversion_path(store: CheckpointStore, name: str, source: ModelSource, dtype: str, fmt: str,
                    fingerprint: str) -> Path:
    return store.root / f"{source_key(name, source)}-{dtype}-{fmt}-{fingerprint}"


def converted(store: CheckpointStore, spec: ModelSpec, name: str, source: ModelSource, records: list[TensorRecord],
              dtype: str, fmt: str, fingerprint: str, provenance: dict[str, Any],
              reference: Checkpoint | None = None, progress: bool = True) -> Checkpoint:
    """The source converted to ``fmt`` at ``dtype`` in the store (written once per fingerprint, streaming, atomic).

    ``reference``: the in-place manifest; without a cast, every converted tensor's checksum must equal it (the
    source did not change while it was read)."""
    dst = conversion_path(store, name, source, dtype, fmt, fingerprint)
    if dst.exists():
        try:
            ckpt = open_checkpoint(dst)
            if ckpt.manifest.get("source", {}).get("fingerprint") == fingerprint:
                return ckpt
            raise CheckpointCorruptError(f"converted from another version of {source.path}")
        except CheckpointError:
            shutil.rmtree(dst, ignore_errors=True)
    values = RealValues(source, {r.name: r for r in records}, provenance)
    try:
        ckpt = store.write(spec, dtype, fmt, 0, dst, progress=progress, values=values,
                           provenance={"generator": GENERATOR, "source": provenance})
    finally:
        values.close()
    if reference is not None and not provenance.get("cast"):
        theirs = {n: t["xxh3_64"] for n, t in reference.tensors.items()}
        mine = {n: t["xxh3_64"] for n, t in ckpt.tensors.items()}
        if theirs != mine:
            shutil.rmtree(dst, ignore_errors=True)
            bad = sorted(n for n in theirs if mine.get(n) != theirs[n])
            raise CheckpointCorruptError(f"converting {source.path} to {fmt}: {len(bad)} tensor(s) differ from its "
                                         f"manifest (e.g. {bad[:3]}): did a file change while it was read? Run again")
    _drop_stale(store.root, f"{source_key(name, source)}-{dtype}-{fmt}-", dst)
    return ckpt
