"""ServerlessLLM-format directories (``tensor_index.json`` + ``tensor.data_N``): validated index, reader plan, writer.

Layout (sllm-store 0.8, ANCHORS.md §1): data files ``tensor.data_0``, ``tensor.data_1``, … hold the tensors back
to back, each padded to 8 bytes, with offsets *global* across the files (file N starts where file N-1 ended;
sllm-store cuts files at 10 GiB). ``tensor_index.json`` maps each name to ``[offset, size, shape, stride, dtype]``
(dtype as ``"torch.float16"``); the object form ``{"offset", "size", "shape", "stride", "dtype"}`` is read too.
The native loader places file N at its global offset in one destination buffer, so every tensor, even one
that spans two files, is a view at its own offset, with its stride. The index is JSON and validated before any
byte is read: each failure is a named ``SllmIndexError``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from loaders.native.format import (
    DTYPE_NAMES,
    DTYPES,
    Extent,
    NativeFormatError,
    PartitionSizeError,
    check_extents,
    load_json,
)

SLLM_INDEX = "tensor_index.json"
DATA_PREFIX = "tensor.data_"
SLLM_PARTITION_BYTES = 10 << 30  # sllm-store's file size limit
PAD = 8
_DATA_RE = re.compile(r"^tensor\.data_(\d+)$")


class SllmIndexError(NativeFormatError):
    """tensor_index.json is malformed, or a tensor lies outside the data files, or the files are not contiguous."""


@dataclass(frozen=True)
class SllmTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # global, across data files
    nbytes: int


def _dtype(raw: object, where: str) -> torch.dtype:
    name = str(raw).removeprefix("torch.") if isinstance(raw, str) else None
    if name not in DTYPES:
        raise SllmIndexError(f"{where}: unknown dtype {raw!r}; known: {sorted(DTYPES)}")
    return DTYPES[name]


def _ints(raw: object, where: str, key: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw):
        raise SllmIndexError(f"{where}: {key} {raw!r} must be a list of non-negative integers")
    return tuple(raw)


def parse_sllm_index(raw: str | bytes, where: str = SLLM_INDEX) -> list[SllmTensor]:
    """Parse ``tensor_index.json`` (types, dtypes, element alignment); ``check_bounds`` then validates the layout."""
    doc = load_json(raw, where, SllmIndexError)
    if not isinstance(doc, dict):
        raise SllmIndexError(f"{where}: top level must be an object of tensor name → entry", path=where)
    out = []
    for name, entry in doc.items():
        tw = f"{where}: tensor {name!r}"
        if isinstance(entry, dict):
            entry = [entry.get(k) for k in ("offset", "size", "shape", "stride", "dtype")]
        if not isinstance(entry, list) or len(entry) != 5:
            raise SllmIndexError(f"{tw}: expected [offset, size, shape, stride, dtype], got {entry!r}", path=where,
                                 entry=name)
        offset, size, shape_raw, stride_raw, dtype_raw = entry
        for key, v in (("offset", offset), ("size", size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SllmIndexError(f"{tw}: {key} {v!r} must be a non-negative integer", path=where, entry=name)
        shape, stride = _ints(shape_raw, tw, "shape"), _ints(stride_raw, tw, "stride")
        dtype = _dtype(dtype_raw, tw)
        if len(stride) != len(shape):
            raise SllmIndexError(f"{tw}: stride {list(stride)} does not match shape {list(shape)}", path=where,
                                 entry=name)
        if offset % dtype.itemsize:
            raise SllmIndexError(f"{tw}: offset {offset} is not aligned to its {dtype.itemsize}-byte elements",
                                 path=where, entry=name)
        out.append(SllmTensor(str(name), dtype, shape, stride, offset, size))
    return out


def data_files(directory: Path) -> list[Path]:
    """``tensor.data_0 … tensor.data_{N-1}``; a gap in the numbering is an error (a file is missing)."""
    found = sorted((int(m.group(1)), p) for p in Path(directory).iterdir() if (m := _DATA_RE.match(p.name)))
    for i, (n, p) in enumerate(found):
        if n != i:
            raise PartitionSizeError(f"{directory}: {DATA_PREFIX}{i} is missing (found {p.name}); the checkpoint "
                                     "is incomplete")
    return [p for _, p in found]


def check_bounds(tensors: list[SllmTensor], total: int, where: str) -> None:
    """The shared validation (``format.check_extents``): every tensor's strided elements lie inside its bytes, its
    bytes inside the data files' ``total``, and no two tensors overlap."""
    check_extents((Extent(t.name, 0, t.offset, t.nbytes, t.shape, t.dtype.itemsize, t.stride) for t in tensors),
                  [total], ["the data files (truncated?)"], where)


def tensor_view(flat: torch.Tensor, t: SllmTensor) -> torch.Tensor:
    """The tensor as a (possibly strided) view of the flat uint8 bytes starting at its offset."""
    if 0 in t.shape:
        return torch.empty(t.shape, dtype=t.dtype)
    raw = flat[: t.nbytes]
    elem = t.dtype.itemsize
    typed = raw[: t.nbytes - t.nbytes % elem].view(t.dtype)
    return torch.as_strided(typed, t.shape, t.stride)


def write_sllm(tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], dst: Path,
               partition_bytes: int = SLLM_PARTITION_BYTES) -> Path:
    """Write tensors as a ServerlessLLM-format directory at ``dst`` (atomically: temp dir, fsync, rename).

    Tensors go back to back, each padded to 8 bytes, cut into files of ``partition_bytes`` (a tensor may span
    two files, as global offsets allow). Used by the tests (and by anyone who wants an sllm-store checkpoint).
    """
    if partition_bytes < PAD or partition_bytes % PAD:
        raise ValueError(f"partition_bytes={partition_bytes} must be a positive multiple of {PAD}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        index: dict[str, list[object]] = {}
        files: list[object] = []
        pos = [0, 0]  # global offset, bytes in the current file

        def emit(data: memoryview) -> None:
            while len(data):
                if not files or pos[1] == partition_bytes:
                    if files:
                        f = files[-1]
                        f.flush()  # type: ignore[attr-defined]
                        os.fsync(f.fileno())  # type: ignore[attr-defined]
                        f.close()  # type: ignore[attr-defined]
                    files.append(open(tmp / f"{DATA_PREFIX}{len(files)}", "wb"))  # noqa: SIM115
                    pos[1] = 0
                take = min(len(data), partition_bytes - pos[1])
                files[-1].write(data[:take])  # type: ignore[attr-defined]
                pos[0] += take
                pos[1] += take
                data = data[take:]

        items = tensors.items() if isinstance(tensors, dict) else tensors
        for name, t in items:
            t = t.detach().cpu().contiguous()
            if t.dtype not in DTYPE_NAMES:
                raise SllmIndexError(f"tensor {name!r}: dtype {t.dtype} is not storable")
            nbytes = t.numel() * t.element_size()
            stride = [s for s in t.stride()] if t.numel() else [0] * t.dim()
            index[name] = [pos[0], nbytes, list(t.shape), stride, str(t.dtype)]
            if nbytes:
                emit(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]
            pad = -pos[0] % PAD
            if pad:
                emit(memoryview(bytes(pad)))
        if not files:
            files.append(open(tmp / f"{DATA_PREFIX}0", "wb"))  # noqa: SIM115
        f = files[-1]
        f.flush()  # type: ignore[attr-defined]
        os.fsync(f.fileno())  # type: ignore[attr-defined]
        f.close()  # type: ignore[attr-defined]
        (tmp / SLLM_INDEX).write_text(json.dumps(index))
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        try:
            tmp.rename(dst)
        except OSError:
            if not (dst / SLLM_INDEX).exists():
                raise
            shutil.rmtree(tmp)  # a concurrent writer finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
