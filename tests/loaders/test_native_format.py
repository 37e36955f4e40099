"""Native format: every malformed index or partition is a named error, never a crash, hang or wrong tensor."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loaders.native import format as fmt
from loaders.native.loader import NativeLoader
from tests.loaders.native_fixtures import make_native, small_state_dict

CPU = torch.device("cpu")


def _load(path: Path, **kw: Any) -> dict[str, torch.Tensor]:
    return NativeLoader(dram_dir=None, **kw).load(path, CPU).state_dict


def _edit_index(path: Path, edit: Any) -> None:
    doc = json.loads((path / fmt.INDEX).read_text())
    edit(doc)
    (path / fmt.INDEX).write_text(json.dumps(doc))


def test_round_trip_and_alignment(tmp_path: Path) -> None:
    path = make_native(tmp_path)
    index = fmt.read_index(path)
    assert len(index.partitions) > 1, "the small partition bound should split the checkpoint"
    assert all(t.offset % fmt.ALIGNMENT == 0 for t in index.tensors)
    assert all(p.size % fmt.ALIGNMENT == 0 for p in index.partitions)
    loaded = _load(path)
    for name, ref in small_state_dict().items():
        assert loaded[name].dtype == ref.dtype
        assert torch.equal(loaded[name], ref), name


@pytest.mark.parametrize(("edit", "error", "needle"), [
    (lambda d: d.update(version=99), fmt.UnsupportedVersionError, "newer"),
    (lambda d: d["tensors"]["a.weight"].update(dtype="float8_e9"), fmt.UnknownDtypeError, "float8_e9"),
    (lambda d: d["tensors"]["a.weight"].update(offset=4096 * 10**6), fmt.TensorBoundsError, "outside partition"),
    (lambda d: d["tensors"]["a.weight"].update(offset=4097), fmt.TensorBoundsError, "aligned"),
    (lambda d: d["tensors"]["a.weight"].update(shape=[301, 70]), fmt.TensorBoundsError, "needs"),
    (lambda d: d["tensors"]["a.weight"].update(partition=7), fmt.TensorBoundsError, "does not exist"),
    (lambda d: d["tensors"]["b.bias"].update(partition=d["tensors"]["a.weight"]["partition"],
                                             offset=d["tensors"]["a.weight"]["offset"]),
     fmt.OverlappingTensorsError, "overlap"),
    (lambda d: d["partitions"][0].update(name="../../etc/passwd"), fmt.UnsafePartitionNameError, "not a plain"),
    (lambda d: d["partitions"][0].update(name="/tmp/x"), fmt.UnsafePartitionNameError, "not a plain"),
    (lambda d: d.pop("tensors"), fmt.IndexError_, "missing field 'tensors'"),
    (lambda d: d.update(format="pickle"), fmt.IndexError_, "format"),
])
def test_bad_index_is_named(tmp_path: Path, edit: Any, error: type[Exception], needle: str) -> None:
    path = make_native(tmp_path)
    _edit_index(path, edit)
    with pytest.raises(error, match=needle):
        _load(path)


def test_truncated_partition(tmp_path: Path) -> None:
    path = make_native(tmp_path)
    part = sorted(path.glob("part-*.bin"))[0]
    with open(part, "r+b") as f:
        f.truncate(part.stat().st_size - 4096)
    with pytest.raises(fmt.PartitionSizeError, match="truncated"):
        _load(path)


@pytest.mark.parametrize("direct_io", ["on", "off"])
def test_flipped_byte_fails_its_chunk_checksum(tmp_path: Path, direct_io: str) -> None:
    path = make_native(tmp_path)
    part = sorted(path.glob("part-*.bin"))[-1]
    with open(part, "r+b") as f:
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(fmt.ChunkChecksumError, match=part.name):
        _load(path, direct_io=direct_io)
    assert _load(path, verify="never")  # with verification off it loads (the user asked for it)


def test_verify_auto_rechecks_changed_partitions(tmp_path: Path) -> None:
    path = make_native(tmp_path)
    assert NativeLoader(dram_dir=None).load(path, CPU).phases_s["verified"] == 1.0
    assert NativeLoader(dram_dir=None).load(path, CPU).phases_s["verified"] == 0.0  # unchanged: not rehashed
    part = sorted(path.glob("part-*.bin"))[0]
    raw = bytearray(part.read_bytes())
    raw[5] ^= 0x10
    part.write_bytes(bytes(raw))  # a rewrite changes the file's mtime: verified again, and caught
    with pytest.raises(fmt.ChunkChecksumError):
        _load(path)


def test_not_a_native_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(fmt.PartitionSizeError, match="coldstart-convert"):
        fmt.read_index(tmp_path)


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**10) | st.text(max_size=12),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(doc=_json)
def test_fuzz_index_parser_random_json(doc: Any) -> None:
    with pytest.raises(fmt.NativeFormatError):
        fmt.parse_index(json.dumps({"format": fmt.FORMAT_NAME, "version": 1, **(doc if isinstance(doc, dict)
                                                                                   else {"x": doc})}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_index_parser_mutated_fields(tmp_path: Path, data: st.DataObject) -> None:
    base = json.loads((make_native(tmp_path / uuid.uuid4().hex) / fmt.INDEX).read_text())
    name = data.draw(st.sampled_from(sorted(base["tensors"])))
    key = data.draw(st.sampled_from(["offset", "nbytes", "partition", "shape", "dtype"]))
    base["tensors"][name][key] = data.draw(_json)
    try:
        index = fmt.parse_index(json.dumps(base))
    except fmt.NativeFormatError:
        return
    # whatever is accepted must describe tensors that lie inside their partitions
    for t in index.tensors:
        assert t.offset + t.nbytes <= index.partitions[t.partition].size


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_partition_reader_never_returns_wrong_tensors(tmp_path: Path, data: st.DataObject) -> None:
    path = make_native(tmp_path / uuid.uuid4().hex)
    part = data.draw(st.sampled_from(sorted(path.glob("part-*.bin"))))
    size = part.stat().st_size
    raw = bytearray(part.read_bytes())
    action = data.draw(st.sampled_from(["flip", "truncate"]))
    if action == "flip":
        pos = data.draw(st.integers(0, size - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    else:
        raw = raw[: data.draw(st.integers(0, size - 1))]
    part.write_bytes(bytes(raw))
    try:
        loaded = _load(path)
    except fmt.NativeFormatError:
        return
    for name, ref in small_state_dict().items():  # a flip in padding is harmless: then every tensor is intact
        assert torch.equal(loaded[name], ref), name


_dims = st.one_of(st.integers(0, 6), st.integers(1 << 31, 1 << 64))
_extent = st.builds(
    fmt.Extent,
    name=st.sampled_from(["a", "b", "c", "d", "e"]),  # few names: duplicates are drawn often
    region=st.integers(-1, 2),
    offset=st.one_of(st.integers(0, 64), st.integers(-3, -1), st.integers(1 << 62, 1 << 64)),
    nbytes=st.one_of(st.integers(0, 64), st.integers(1 << 62, 1 << 64)),
    shape=st.lists(_dims, max_size=3).map(tuple),
    itemsize=st.sampled_from([1, 2, 4, 8]),
    stride=st.one_of(st.none(), st.lists(st.one_of(st.integers(0, 8), st.integers(1 << 62, 1 << 64)),
                                         max_size=3).map(tuple)),
)


@settings(max_examples=400, deadline=None)
@given(extents=st.lists(_extent, max_size=6), sizes=st.lists(st.integers(0, 96), min_size=1, max_size=3))
def test_fuzz_shared_validator_overlaps_duplicates_overflows(extents: list[fmt.Extent], sizes: list[int]) -> None:
    """Whatever the shared validator accepts is unique, in bounds, below 2^63, exactly sized and free of overlaps
    (checked here pairwise, by brute force); whatever it refuses, it refuses with a named error."""
    try:
        fmt.check_extents(extents, sizes, [f"region {i}" for i in range(len(sizes))], "fuzz.json")
    except fmt.NativeFormatError as exc:
        refused: fmt.NativeFormatError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.path == "fuzz.json"
        return
    assert len({e.name for e in extents}) == len(extents)
    for e in extents:
        numel = math.prod(e.shape)
        assert 0 <= e.region < len(sizes)
        assert e.offset >= 0
        assert e.offset + e.nbytes <= sizes[e.region]
        assert numel * e.itemsize < 1 << 63
        if e.stride is None:
            assert e.nbytes == numel * e.itemsize
        else:
            assert numel * e.itemsize <= e.nbytes
            if numel:
                assert (1 + sum((d - 1) * s for d, s in zip(e.shape, e.stride, strict=True))) * e.itemsize <= e.nbytes
    for i, a in enumerate(extents):
        for b in extents[i + 1 :]:
            if a.region == b.region and a.nbytes and b.nbytes:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)
