"""The checkpoint store: seeded synthetic checkpoints of zoo models in each format, cached and verified by manifest."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import xxhash
from tqdm import tqdm

from harness.synthetic import GENERATOR_VERSION, iter_chunks, synthetic_tensor
from harness.zoo import ModelSpec, TensorSpec
from loaders.tensorizer import TENSORS_FILE

MANIFEST = "coldstart_manifest.json"
MANIFEST_VERSION = 1
ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

# safetensors header dtype codes (the format's spec)
ST_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
    torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8", torch.float64: "F64",
    torch.int16: "I16",
}
DTYPE_NAMES: dict[torch.dtype, str] = {d: str(d).removeprefix("torch.") for d in ST_DTYPES}


class CheckpointError(Exception):
    """Base of every checkpoint problem a user can cause."""


class CheckpointMissingError(CheckpointError, FileNotFoundError):
    """A checkpoint directory, manifest or data file does not exist."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's files disagree with its manifest (size, truncation, unreadable header)."""


class ChecksumMismatchError(CheckpointCorruptError):
    """Loaded tensor bytes differ from the manifest's checksum."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (no space, bad format); nothing partial is left behind."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory on disk and its manifest (names, dtypes, shapes, checksums, file sizes).

    The manifest is the directory's own ``coldstart_manifest.json``, except for a real model's files read in place,
    whose manifest lives in the checkpoint store (``manifest_file``): their directory is never written."""

    path: Path
    manifest: dict[str, Any]
    manifest_file: Path | None = None  # None: path / MANIFEST

    @property
    def manifest_path(self) -> Path:
        return self.manifest_file or self.path / MANIFEST

    @property
    def format(self) -> str:
        return str(self.manifest["format"])

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data (what a loader must deliver)."""
        return int(self.manifest["total_bytes"])

    @property
    def files(self) -> list[Path]:
        """The data files (shards), in order."""
        return [self.path / name for name in self.manifest["files"]]

    @property
    def tensors(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["tensors"])

    def check_files(self) -> None:
        """Every data file exists with the manifest's size (cheap; full checksums happen after each load)."""
        for name, size in self.manifest["files"].items():
            path = self.path / name
            if not path.exists():
                raise CheckpointMissingError(f"{path} is missing (checkpoint {self.path}); delete the directory "
                                             "to have it regenerated")
            actual = path.stat().st_size
            if actual != size:
                raise CheckpointCorruptError(f"{path} has {actual} bytes, the manifest says {size} "
                                             f"({'truncated' if actual < size else 'too long'}); delete "
                                             f"{self.path} to have it regenerated")


def open_checkpoint(path: Path, manifest_file: Path | str | None = None) -> Checkpoint:
    """Read a checkpoint directory's manifest (its own, or ``manifest_file`` kept elsewhere) and check its files."""
    path = Path(path)
    manifest_path = Path(manifest_file) if manifest_file else path / MANIFEST
    if not manifest_path.exists():
        raise CheckpointMissingError(f"{manifest_path} not found: not a coldstart checkpoint directory")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointCorruptError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("version") != MANIFEST_VERSION:
        raise CheckpointCorruptError(f"{manifest_path}: manifest version {manifest.get('version')!r}, "
                                     f"this coldstart reads version {MANIFEST_VERSION}")
    ckpt = Checkpoint(path, manifest, Path(manifest_file) if manifest_file else None)
    ckpt.check_files()
    return ckpt


def _bytes_view(t: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (dtypes numpy lacks, such as bfloat16, viewed as uint8 first)."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def tensor_digest(t: torch.Tensor) -> str:
    """xxh3-64 of a tensor's bytes (C order, native little-endian), as hex."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return xxhash.xxh3_64_hexdigest(_bytes_view(t))


def verify_state_dict(ckpt: Checkpoint, state_dict: dict[str, torch.Tensor]) -> int:
    """Compare every tensor with the manifest (names, dtype, shape, checksum); return bytes verified."""
    expected = ckpt.tensors
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise ChecksumMismatchError(f"{ckpt.path}: loaded tensors differ from the manifest: "
                                    f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                                    f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}")
    total = 0
    for name, meta in expected.items():
        t = state_dict[name]
        if DTYPE_NAMES.get(t.dtype) != meta["dtype"] or list(t.shape) != meta["shape"]:
            raise ChecksumMismatchError(f"{ckpt.path}: tensor {name!r} loaded as {t.dtype} {list(t.shape)}, "
                                        f"the manifest says {meta['dtype']} {meta['shape']}")
        digest = tensor_digest(t)
        if digest != meta["xxh3_64"]:
            raise ChecksumMismatchError(f"{ckpt.path}: tensor {name!r} checksum {digest} != manifest "
                                        f"{meta['xxh3_64']}: the loaded bytes are wrong")
        total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------------------------------------------
# Writers: each streams tensors (chunk by chunk where the format allows) and returns the per-tensor manifest.


class TensorValues(Protocol):
    """Where a writer's tensor values come from: seeded synthetic values, or a real checkpoint's files."""

    def chunks(self, ts: TensorSpec) -> Iterator[torch.Tensor]:
        """The tensor's values in ``ts.dtype`` as consecutive pieces (C order): concatenated, the tensor."""
        ...

    def tensor(self, ts: TensorSpec) -> torch.Tensor:
        """The whole tensor, shaped ``ts.shape``."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the values are (kept in the native index's metadata)."""
        ...


@dataclass(frozen=True)
class SyntheticValues:
    """Seeded synthetic values: each tensor's bytes depend only on (seed, name)."""

    seed: int

    def chunks(self, ts: TensorSpec) -> Iterator[torch.Tensor]:
        return iter_chunks(ts, self.seed)

    def tensor(self, ts: TensorSpec) -> torch.Tensor:
        return synthetic_tensor(ts, self.seed)

    def describe(self) -> dict[str, Any]:
        return {"source": "coldstart synthetic", "seed": self.seed}


@runtime_checkable
class OwnCheckpoints(Protocol):
    """A model whose checkpoints are not synthetic (a real model): it says where each format of it is."""

    def ensure_checkpoint(self, store: CheckpointStore, dtype: str, fmt: str, progress: bool) -> Checkpoint: ...

    def checkpoint_path(self, store: CheckpointStore, dtype: str, fmt: str) -> Path: ...


@dataclass
class ManifestEntry:
    """One tensor of a written checkpoint: its spec, the file holding it and the xxh3 of its bytes."""

    spec: TensorSpec
    file: str
    digest: str = ""


def _plan_shards(specs: tuple[TensorSpec, ...], shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for ts in specs:
        if shards[-1] and size + ts.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(ts)
        size += ts.nbytes
    return shards


def _shard_names(prefix: str, ext: str, n: int) -> list[str]:
    if n == 1:
        return [f"{prefix}.{ext}"]
    return [f"{prefix}-{i + 1:05d}-of-{n:05d}.{ext}" for i in range(n)]


def _write_bytes(f: Any, chunk: torch.Tensor) -> None:
    f.write(_bytes_view(chunk))


def _write_safetensors(specs: tuple[TensorSpec, ...], dst: Path, values: TensorValues, bar: tqdm, *,
                       shard_bytes: int) -> tuple[list[ManifestEntry], list[str]]:
    shards = _plan_shards(specs, shard_bytes)
    names = _shard_names("model", "safetensors", len(shards))
    entries: list[ManifestEntry] = []
    for shard, fname in zip(shards, names, strict=True):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for ts in shard:
            header[ts.name] = {"dtype": ST_DTYPES[ts.dtype], "shape": list(ts.shape),
                               "data_offsets": [offset, offset + ts.nbytes]}
            offset += ts.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        with _open_for_write(dst / fname) as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for ts in shard:
                h = xxhash.xxh3_64()
                for chunk in values.chunks(ts):
                    h.update(_bytes_view(chunk))
                    _write_bytes(f, chunk)
                    bar.update(chunk.numel() * chunk.element_size())
                entries.append(ManifestEntry(ts, fname, h.hexdigest()))
            _fsync(f)
    index = {"metadata": {"total_size": sum(ts.nbytes for ts in specs)},
             "weight_map": {e.spec.name: e.file for e in entries}}
    if len(names) > 1:
        (dst / ST_INDEX).write_text(json.dumps(index, indent=2))
    return entries, names


def _write_torch(specs: tuple[TensorSpec, ...], dst: Path, values: TensorValues, bar: tqdm, *, shard_bytes: int,
                 single: bool) -> tuple[list[ManifestEntry], list[str]]:
    total = sum(ts.nbytes for ts in specs)
    if single and total > shard_bytes:
        raise CheckpointWriteError(f"format torch_pt writes one torch.save file and holds it in memory: "
                                   f"{total} bytes exceeds the bound storage.torch_pt_max_bytes={shard_bytes}; "
                                   "use format torch_bin (sharded) for this model")
    shards = [list(specs)] if single else _plan_shards(specs, shard_bytes)
    names = ["model.pt"] if single else _shard_names("pytorch_model", "bin", len(shards))
    entries: list[ManifestEntry] = []
    for shard, fname in zip(shards, names, strict=True):
        tensors: dict[str, torch.Tensor] = {}
        for ts in shard:  # one shard in memory at a time: the bound on the writer's memory
            t = values.tensor(ts)
            tensors[ts.name] = t
            entries.append(ManifestEntry(ts, fname, tensor_digest(t)))
            bar.update(ts.nbytes)
        with _open_for_write(dst / fname) as f:
            torch.save(tensors, f)
            _fsync(f)
        del tensors
    if not single and len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {e.spec.name: e.file for e in entries}}
        (dst / BIN_INDEX).write_text(json.dumps(index, indent=2))
    return entries, names


def _write_native(specs: tuple[TensorSpec, ...], dst: Path, values: TensorValues, bar: tqdm, *,
                  partition_bytes: int) -> tuple[list[ManifestEntry], list[str]]:
    """The native format (loaders/native/format.py), streamed chunk by chunk through its partition writer."""
    from loaders.native.convert import PartitionWriter, TensorSource

    writer = PartitionWriter(dst, partition_bytes, 16 << 20, bar)
    entries: list[ManifestEntry] = []
    for ts in specs:
        h = xxhash.xxh3_64()

        def hashed(ts: TensorSpec = ts, h: Any = h) -> Any:
            for chunk in values.chunks(ts):
                h.update(_bytes_view(chunk))
                yield chunk

        writer.add(TensorSource(ts.name, ts.dtype, ts.shape, ts.nbytes, chunks=hashed()))
        entries.append(ManifestEntry(ts, writer.tensors[-1].name))
        entries[-1].digest = h.hexdigest()
    index = writer.finish(values.describe())
    (dst / "index.json").write_text(json.dumps(index.to_json(), indent=1))
    names = [p.name for p in index.partitions]
    for e, t in zip(entries, index.tensors, strict=True):
        e.file = names[t.partition]
    return entries, names


def _write_tensorizer(specs: tuple[TensorSpec, ...], dst: Path, values: TensorValues,
                      bar: tqdm) -> tuple[list[ManifestEntry], list[str]]:
    """tensorizer's format: one ``model.tensors``, serialized with ``TensorSerializer.write_tensor`` one tensor at a
    time (memory bounded by the largest tensor; names are the plain state-dict keys). Needs ``coldstart[peers]``."""
    if importlib.util.find_spec("tensorizer") is None:
        raise CheckpointWriteError("format tensorizer needs the tensorizer package: pip install 'coldstart[peers]'")
    from tensorizer import TensorSerializer
    from tensorizer.serialization import TensorType

    entries: list[ManifestEntry] = []
    with open(dst / TENSORS_FILE, "wb+") as f:  # tensorizer requires a readable, writable, seekable file
        serializer = TensorSerializer(f)
        try:
            for ts in specs:
                pieces = [c.reshape(-1) for c in values.chunks(ts)]
                t = torch.cat(pieces).reshape(ts.shape) if pieces else torch.empty(ts.shape, dtype=ts.dtype)
                serializer.write_tensor(0, ts.name, TensorType.STATE_DICT, t)
                entries.append(ManifestEntry(ts, TENSORS_FILE, tensor_digest(t)))
                bar.update(ts.nbytes)
        finally:
            serializer.close()  # writes the header's tensor count and size; closes f (fsynced by the store)
    return entries, [TENSORS_FILE]


Writer = Callable[[tuple[TensorSpec, ...], Path, TensorValues, tqdm], tuple[list[ManifestEntry], list[str]]]

# The checkpoint formats the zoo writes, each with its writer (given the store's shard sizes): the one list.
FORMAT_WRITERS: dict[str, Callable[[CheckpointStore], Writer]] = {
    "safetensors": lambda st: partial(_write_safetensors, shard_bytes=st.safetensors_shard_bytes),
    "torch_bin": lambda st: partial(_write_torch, shard_bytes=st.torch_shard_bytes, single=False),
    "torch_pt": lambda st: partial(_write_torch, shard_bytes=st.torch_pt_max_bytes, single=True),
    "native": lambda st: partial(_write_native, partition_bytes=st.safetensors_shard_bytes),
    "tensorizer": lambda st: _write_tensorizer,
}


def _open_for_write(path: Path) -> Any:
    """Open a data file for writing (a seam tests use to simulate a full disk)."""
    return open(path, "wb")


def _fsync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


class CheckpointStore:
    """Generated checkpoints cached under ``root`` keyed by model, dtype, format and seed; written atomically."""

    FORMATS = tuple(FORMAT_WRITERS)
    safetensors_shard_bytes: int
    torch_shard_bytes: int
    torch_pt_max_bytes: int

    def __init__(self, root: str | Path, safetensors_shard_bytes: int = 4 << 30,
                 torch_shard_bytes: int = 256 << 20, torch_pt_max_bytes: int = 4 << 30,
                 remote_url: str | None = None) -> None:
        for key, value in (("safetensors_shard_bytes", safetensors_shard_bytes),
                           ("torch_shard_bytes", torch_shard_bytes), ("torch_pt_max_bytes", torch_pt_max_bytes)):
            if value <= 0:
                raise ValueError(f"storage.{key} must be > 0, got {value}")
        self.root = Path(os.path.expanduser(str(root)))
        self.safetensors_shard_bytes = int(safetensors_shard_bytes)
        self.torch_shard_bytes = int(torch_shard_bytes)
        self.torch_pt_max_bytes = int(torch_pt_max_bytes)
        self.remote_url = remote_url.rstrip("/") if remote_url else None  # where a server publishes ``root``

    def url_for(self, ckpt: Checkpoint) -> str:
        """The checkpoint's URL on the remote store (storage=remote: ``remote_url`` serves this store's root)."""
        if not self.remote_url:
            raise ValueError("storage.remote_url is not set: choose storage=remote (or set storage.remote_url)")
        return f"{self.remote_url}/{ckpt.path.name}"

    def _writer(self, fmt: str) -> Writer:
        if fmt not in FORMAT_WRITERS:
            raise ValueError(f"checkpoint format {fmt!r} is not supported; choose one of {sorted(FORMAT_WRITERS)}")
        return FORMAT_WRITERS[fmt](self)

    def path_for(self, spec: ModelSpec, dtype: str, fmt: str, seed: int) -> Path:
        """Where the store writes this checkpoint (a real model's: where its conversion goes, never its own
        directory)."""
        if isinstance(spec, OwnCheckpoints):
            return spec.checkpoint_path(self, dtype, fmt)
        return self.root / f"{spec.name}-{spec.resolve_dtype(dtype)}-{fmt}-seed{seed}"

    def ensure(self, spec: ModelSpec, dtype: str, fmt: str, seed: int = 0, progress: bool = True) -> Checkpoint:
        """The cached checkpoint if it is intact, else a freshly written one. A real model says where its own is
        (its directory read in place, or a conversion in this store)."""
        if isinstance(spec, OwnCheckpoints):
            return spec.ensure_checkpoint(self, dtype, fmt, progress)
        dtype = spec.resolve_dtype(dtype)  # auto: the zoo's fp16
        path = self.path_for(spec, dtype, fmt, seed)
        if path.exists():
            try:
                ckpt = open_checkpoint(path)
                if ckpt.manifest.get("generator") != GENERATOR_VERSION:
                    raise CheckpointCorruptError(f"written by synthetic generator {ckpt.manifest.get('generator')}, "
                                                 f"this coldstart writes version {GENERATOR_VERSION}")
                return ckpt
            except CheckpointError as exc:
                tqdm.write(f"[coldstart] cached checkpoint unusable ({exc}); regenerating {path}")
                shutil.rmtree(path)
        return self.write(spec, dtype, fmt, seed, path, progress=progress)

    def write(self, spec: ModelSpec, dtype: str, fmt: str, seed: int, dst: Path, progress: bool = True,
              values: TensorValues | None = None, provenance: dict[str, Any] | None = None) -> Checkpoint:
        """Write a checkpoint to ``dst`` through a temp directory, fsync and rename; nothing partial survives.

        ``values``: where the tensors come from (default: synthetic with ``seed``); ``provenance``: what the manifest
        says about them (default: the synthetic generator's version and the seed)."""
        writer = self._writer(fmt)
        values = values if values is not None else SyntheticValues(seed)
        provenance = provenance if provenance is not None else {"generator": GENERATOR_VERSION, "seed": seed}
        specs = spec.tensor_specs(dtype)
        total = sum(ts.nbytes for ts in specs)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(dst.parent).free
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoints under {dst.parent} ({exc.strerror}); point "
                                       "storage.root (COLDSTART_CACHE) at a writable directory") from None
        if free < total * 1.02 + (64 << 20):
            raise CheckpointWriteError(f"not enough disk space for {spec.name} {dtype} {fmt}: needs {total / 1e9:.2f} "
                                       f"GB, {free / 1e9:.2f} GB free under {dst.parent}; free space or point "
                                       "storage.root (COLDSTART_CACHE) elsewhere")
        tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoints under {dst.parent} ({exc.strerror}); point "
                                       "storage.root (COLDSTART_CACHE) at a writable directory") from None
        try:
            with tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                      desc=f"writing {spec.name} {dtype} {fmt}") as bar:
                entries, files = writer(specs, tmp, values, bar)
            spec.config(dtype).to_json_file(str(tmp / "config.json"))
            manifest = {
                "version": MANIFEST_VERSION, **provenance, "model": spec.name, "dtype": dtype, "format": fmt,
                "total_bytes": total,
                "files": {name: (tmp / name).stat().st_size for name in files},
                "tensors": {e.spec.name: {"dtype": DTYPE_NAMES[e.spec.dtype], "shape": list(e.spec.shape),
                                          "nbytes": e.spec.nbytes, "file": e.file, "xxh3_64": e.digest}
                            for e in entries},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _fsync_dir(tmp)
            try:
                tmp.rename(dst)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                shutil.rmtree(tmp)  # another process finished the same checkpoint first; use theirs
            _fsync_dir(dst.parent)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if _is_enospc(exc):
                raise CheckpointWriteError(f"no space left on device while writing {dst}; the partial checkpoint "
                                           "was removed. Free space or point storage.root elsewhere") from exc
            raise
        return open_checkpoint(dst)


def _is_enospc(exc: BaseException | None) -> bool:
    """A full disk, also when a library (torch.save's zip writer) re-raised it as another error."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            fd = os.open(child, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
