"""ServerlessLLM-format directories load directly (format=sllm or auto); a bad index is a named error; fuzzed."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from harness.checkpoints import CheckpointStore, verify_state_dict
from loaders.native.format import NativeFormatError, PartitionSizeError
from loaders.native.loader import NativeLoader, detect_format
from loaders.native.sllm import SLLM_INDEX, SllmIndexError, parse_sllm_index, write_sllm
from tests.conftest import model_spec
from tests.loaders.native_fixtures import small_state_dict

CPU = torch.device("cpu")


def _sllm(tmp: Path, partition_bytes: int = 10 << 30, name: str = "sllm") -> Path:
    return write_sllm(small_state_dict(), tmp / name, partition_bytes=partition_bytes)


@pytest.mark.parametrize(("staging", "direct_io"), [("map", "off"), ("direct", "off"), ("direct", "on"),
                                                    ("ring", "off")])
@pytest.mark.parametrize("partition_bytes", [10 << 30, 4096])  # one file; many, with tensors spanning two
def test_sllm_equivalence(tmp_path: Path, staging: str, direct_io: str, partition_bytes: int) -> None:
    d = _sllm(tmp_path, partition_bytes)
    assert detect_format(d) == "sllm"
    result = NativeLoader(format="auto", staging=staging, direct_io=direct_io, dram_dir=None, chunk_bytes=4096,
                          ring_bytes=16384).load(d, CPU)
    for k, v in small_state_dict().items():
        assert result.state_dict[k].dtype == v.dtype, k
        assert torch.equal(result.state_dict[k], v), k
    assert set(result.bytes_by_tier) == {"ssd"}


def test_sllm_of_a_real_architecture_matches_the_manifest(shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-llama"), "bf16", "safetensors", progress=False)
    sd: dict[str, torch.Tensor] = {}
    for f in ckpt.files:
        sd.update(load_file(f))
    d = write_sllm(sd, tmp_path / "llama-sllm", partition_bytes=1 << 16)
    result = NativeLoader(format="sllm", dram_dir=None).load(d, CPU)
    assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes


def test_strided_entries_become_strided_views(tmp_path: Path) -> None:
    d = _sllm(tmp_path)
    doc = json.loads((d / SLLM_INDEX).read_text())
    off, size, shape, _, dtype = doc["a.weight"]
    doc["a.weight"] = [off, size, shape[::-1], [1, shape[1]], dtype]  # the transpose of the stored bytes
    (d / SLLM_INDEX).write_text(json.dumps(doc))
    got = NativeLoader(format="sllm", dram_dir=None, staging="direct").load(d, CPU).state_dict["a.weight"]
    assert torch.equal(got, small_state_dict()["a.weight"].t())


def _corrupt(d: Path, fn: object) -> None:
    doc = json.loads((d / SLLM_INDEX).read_text())
    fn(doc)  # type: ignore[operator]
    (d / SLLM_INDEX).write_text(json.dumps(doc))


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda doc: doc.__setitem__("a.weight", [0, 1, [2], [1], "torch.float99"]), "unknown dtype"),
    (lambda doc: doc["a.weight"].__setitem__(0, 10**12), "outside the data files"),
    (lambda doc: doc["b.bias"].__setitem__(0, doc["a.weight"][0]), "overlap"),
    (lambda doc: doc["a.weight"].__setitem__(1, 4), "needs"),
    (lambda doc: doc["a.weight"].__setitem__(3, [1]), "stride"),
    (lambda doc: doc.__setitem__("x", {"offset": -1}), "non-negative"),
    (lambda doc: doc.__setitem__("x", "nope"), "expected"),
])
def test_bad_sllm_index_is_named(tmp_path: Path, mutate: object, match: str) -> None:
    """Parse errors are ``SllmIndexError``s; layout errors come from the validator shared with the other readers."""
    d = _sllm(tmp_path)
    _corrupt(d, mutate)
    with pytest.raises(NativeFormatError, match=match):
        NativeLoader(format="sllm", dram_dir=None).load(d, CPU)


def test_missing_or_truncated_data_files_are_named(tmp_path: Path) -> None:
    d = _sllm(tmp_path, 4096)
    (d / "tensor.data_1").unlink()
    with pytest.raises(PartitionSizeError, match=r"tensor\.data_1 is missing"):
        NativeLoader(format="sllm", dram_dir=None).load(d, CPU)
    d2 = _sllm(tmp_path, name="trunc")
    data = (d2 / "tensor.data_0").read_bytes()
    (d2 / "tensor.data_0").write_bytes(data[: len(data) // 2])
    with pytest.raises(NativeFormatError, match="truncated"):
        NativeLoader(format="sllm", dram_dir=None).load(d2, CPU)
    (d2 / SLLM_INDEX).write_text("{not json")
    with pytest.raises(SllmIndexError, match="not valid JSON"):
        NativeLoader(format="auto", dram_dir=None).load(d2, CPU)


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                     max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.text(max_size=6), _json, max_size=4))
def test_fuzz_sllm_index_parser(doc: dict[str, object]) -> None:
    with contextlib.suppress(NativeFormatError):
        parse_sllm_index(json.dumps(doc))


@settings(max_examples=100, deadline=None)
@given(entries=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 3000), st.integers(0, 40),
                                  st.sampled_from(["torch.float16", "torch.float32", "torch.int8", "bfloat16"])),
                        max_size=5),
       raw=st.binary(max_size=6000))
def test_fuzz_sllm_reader(tmp_path_factory: pytest.TempPathFactory,
                          entries: list[tuple[int, int, int, str]], raw: bytes) -> None:
    """Random indexes over random data: the loader returns tensors inside the bytes, or a named error."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "tensor.data_0").write_bytes(raw)
    (d / SLLM_INDEX).write_text(json.dumps({f"t{i}": [o, s, [n], [1], dt] for i, (o, s, n, dt) in enumerate(entries)}))
    try:
        sd = NativeLoader(format="sllm", dram_dir=None, staging="direct", chunk_bytes=4096).load(d, CPU).state_dict
    except NativeFormatError:
        return
    for i, (o, _, n, _) in enumerate(entries):
        t = sd[f"t{i}"]
        assert t.numel() == n
        nb = t.numel() * t.element_size()
        assert t.view(torch.uint8).reshape(-1).numpy().tobytes() == raw[o : o + nb] if nb else True
