"""Hostile checkpoint directories: every one is refused with a named error, reads nothing outside the checkpoint,
never hangs, and no DRAM-tier entry ever serves another checkpoint's (or an older version's) bytes.

The corpus is generated here (no binary blobs). "Nothing outside was read" is shown without strace: the outside
file a link points at is a FIFO, whose open would block the load forever, so every such case also runs under a
time bound; "no tensor byte was read" by spies on the two read engines that fail the test if either is called.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from loaders.native import format as fmt
from loaders.native import reads, tiers
from loaders.native.integrity import SOURCE, VERIFIED
from loaders.native.loader import NativeLoader
from loaders.native.plan import SAMPLE_FRACTION
from loaders.native.remote import RemoteHTTPError, RemoteTooLargeError
from loaders.native.sllm import SLLM_INDEX, write_sllm
from loaders.native.tiers import LOCKS, DramTier, TierCapacityError
from tests.loaders.native_fixtures import make_native, small_state_dict

CPU = torch.device("cpu")
BOUND_S = 20.0  # every hostile load returns (with its error) well within this


def _within(fn: Callable[[], Any], fifo: Path | None = None, bound_s: float = BOUND_S) -> Any:
    """Run ``fn`` in a thread; fail if it has not returned within ``bound_s`` (then open ``fifo``'s write end, which
    releases a reader stuck on it, so the test process can still exit). Returns fn's result, re-raises its error."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(bound_s)
    if t.is_alive():
        if fifo is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"the load did not return within {bound_s} s (blocked on a special file?)")
    assert time.monotonic() - t0 < bound_s
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any tensor byte is read (both read engines of the loader's read paths are spied on)."""
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("a tensor byte was read before the checkpoint was rejected")

    monkeypatch.setattr(reads, "populate", refuse)
    monkeypatch.setattr(reads, "run_pipeline", refuse)


def _load(path: Path | str, **kw: Any) -> dict[str, torch.Tensor]:
    kw.setdefault("dram_dir", None)
    return NativeLoader(**kw).load(path, CPU).state_dict  # type: ignore[no-any-return]


def _outside_fifo(tmp: Path) -> Path:
    fifo = tmp / "outside" / "secret.fifo"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    return fifo


def _safetensors(tmp: Path, name: str = "st", header: dict[str, Any] | None = None, data: bytes = b"") -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    if header is None:
        header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
        data = struct.pack("<4f", 1, 2, 3, 4)
    raw = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return d


def _equal(loaded: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> bool:
    return set(loaded) == set(ref) and all(torch.equal(loaded[k], v) for k, v in ref.items())


# -- 1. the wrong-weights bug: DRAM entries keyed by resolved path and fingerprint ---------------------------------
def test_same_name_in_two_parents_each_serves_its_own_bytes(tmp_path: Path) -> None:
    """Regression: both staged, loaded alternately, each returns its own tensors (they were keyed by name only)."""
    from loaders.native.convert import convert

    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    convert(small_state_dict(1), a, partition_bytes=40_000, chunk_bytes=8192, progress=False)
    convert(small_state_dict(2), b, partition_bytes=40_000, chunk_bytes=8192, progress=False)
    loader = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    loader.stage_in_dram(a)
    loader.stage_in_dram(b)
    assert len(DramTier(tmp_path / "dram").entries()) == 2
    for _ in range(2):
        for path, seed in ((a, 1), (b, 2)):
            result = loader.load(path, CPU)
            assert set(result.bytes_by_tier) == {"dram"}
            assert _equal(result.state_dict, small_state_dict(seed)), path


def test_reconverted_in_place_is_served_fresh(tmp_path: Path) -> None:
    """Re-converting a staged checkpoint in place: the hot load sees the changed fingerprint, re-stages, serves new."""
    import shutil

    from loaders.native.convert import convert

    path = tmp_path / "model"
    convert(small_state_dict(1), path, partition_bytes=40_000, chunk_bytes=8192, progress=False)
    loader = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    loader.stage_in_dram(path)
    assert _equal(loader.load(path, CPU).state_dict, small_state_dict(1))
    shutil.rmtree(path)
    convert(small_state_dict(2), path, partition_bytes=40_000, chunk_bytes=8192, progress=False)
    fresh = loader.load(path, CPU)
    assert set(fresh.bytes_by_tier) == {"dram"}  # staged again from the new source
    assert _equal(fresh.state_dict, small_state_dict(2))
    assert [k for _, k, _ in DramTier(tmp_path / "dram").entries()] == [loader.tier_key(path)]


def test_a_dot_directory_loads_with_a_dram_tier(tmp_path: Path) -> None:
    src = make_native(tmp_path)
    hidden = src.rename(tmp_path / ".hidden-model")
    loader = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    assert _equal(loader.load(hidden, CPU).state_dict, small_state_dict())
    loader.stage_in_dram(hidden)
    hot = loader.load(hidden, CPU)
    assert set(hot.bytes_by_tier) == {"dram"}
    assert _equal(hot.state_dict, small_state_dict())


def test_staging_copies_only_indexed_files_as_private_regular_files(tmp_path: Path) -> None:
    src = make_native(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the tier")
    secret.chmod(0o600)
    (src / "notes.txt").symlink_to(secret)  # an extra file, and a link out: neither is the checkpoint's
    (src / "README.md").write_text("extra")
    loader = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    copy = loader.stage_in_dram(src)
    names = {p.name for p in copy.iterdir() if not p.name.startswith(".")}
    assert names == {fmt.INDEX, *(p.name for p in fmt.read_index(src).partitions)}
    assert (copy.stat().st_mode & 0o777) == 0o700
    for p in copy.iterdir():
        st = p.lstat()
        assert not p.is_symlink()
        if not p.name.startswith("."):
            assert (st.st_mode & 0o777) == 0o600, p
    assert (copy / SOURCE).exists()


# -- 2. links out of the checkpoint, special files, size caps ------------------------------------------------------
def _link_out(target_dir: Path, name: str, fifo: Path) -> None:
    victim = target_dir / name
    victim.unlink()
    victim.symlink_to(fifo)


@pytest.mark.parametrize("which", ["partition", "index"])
def test_native_link_out_of_the_checkpoint_is_refused(tmp_path: Path, which: str, no_reads: None) -> None:
    src = make_native(tmp_path)
    fifo = _outside_fifo(tmp_path)
    name = fmt.INDEX if which == "index" else sorted(p.name for p in src.glob("part-*.bin"))[0]
    _link_out(src, name, fifo)
    with pytest.raises(fmt.OutsideCheckpointError, match="outside the checkpoint directory") as info:
        _within(lambda: _load(src, verify="never"), fifo)
    assert info.value.entry == name


def test_sllm_data_file_and_index_links_out_are_refused(tmp_path: Path, no_reads: None) -> None:
    fifo = _outside_fifo(tmp_path)
    for name in ("tensor.data_0", SLLM_INDEX):
        d = write_sllm(small_state_dict(), tmp_path / f"sllm-{name}")
        _link_out(d, name, fifo)
        with pytest.raises(fmt.OutsideCheckpointError):
            _within(lambda d=d: _load(d, format="sllm"), fifo)  # type: ignore[misc]


def test_safetensors_shard_link_out_is_refused(tmp_path: Path, no_reads: None) -> None:
    d = _safetensors(tmp_path)
    fifo = _outside_fifo(tmp_path)
    _link_out(d, "model.safetensors", fifo)
    with pytest.raises(fmt.OutsideCheckpointError):
        _within(lambda: _load(d, format="safetensors"), fifo)


def test_partition_linked_to_dev_zero_is_refused(tmp_path: Path, no_reads: None) -> None:
    src = make_native(tmp_path)
    part = sorted(src.glob("part-*.bin"))[0]
    part.unlink()
    part.symlink_to("/dev/zero")
    with pytest.raises(fmt.OutsideCheckpointError):
        _within(lambda: _load(src, verify="never"))


def test_links_that_stay_inside_and_a_linked_directory_are_fine(tmp_path: Path) -> None:
    src = make_native(tmp_path)
    part = sorted(src.glob("part-*.bin"))[0]
    (src / "blobs").mkdir()
    part.rename(src / "blobs" / "blob-0")
    part.symlink_to(Path("blobs") / "blob-0")  # a hub-cache style link within the directory
    linked = tmp_path / "linked-dir"
    linked.symlink_to(src)
    for path in (src, linked):
        assert _equal(_load(path), small_state_dict())


@pytest.mark.parametrize("kind", ["native-index", "native-partition", "sllm-index", "sllm-data", "safetensors"])
def test_fifo_inside_the_checkpoint_is_refused_without_blocking(tmp_path: Path, kind: str, no_reads: None) -> None:
    if kind.startswith("native"):
        d = make_native(tmp_path)
        name = fmt.INDEX if kind == "native-index" else sorted(p.name for p in d.glob("part-*.bin"))[0]
    elif kind.startswith("sllm"):
        d = write_sllm(small_state_dict(), tmp_path / "sllm")
        name = SLLM_INDEX if kind == "sllm-index" else "tensor.data_0"
    else:
        d, name = _safetensors(tmp_path), "model.safetensors"
    (d / name).unlink()
    os.mkfifo(d / name)
    with pytest.raises(fmt.NotRegularFileError, match="a FIFO"):
        _within(lambda: _load(d), d / name)


def test_index_size_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_native(tmp_path)
    size = (src / fmt.INDEX).stat().st_size
    with monkeypatch.context() as m:
        m.setattr(fmt, "open_regular", lambda *a: pytest.fail("an index over the cap was opened"))
        with pytest.raises(fmt.IndexTooLargeError, match="max_index_bytes"):
            _load(src, max_index_bytes=size - 1)
    assert _equal(_load(src, max_index_bytes=size), small_state_dict())
    with pytest.raises(ValueError, match="max_index_bytes"):
        NativeLoader(dram_dir=None, max_index_bytes=0)


# -- 3. the shared validator: before any byte is read ---------------------------------------------------------------
def _edit(path: Path, edit: Callable[[dict[str, Any]], None], name: str = fmt.INDEX) -> None:
    doc = json.loads((path / name).read_text())
    edit(doc)
    (path / name).write_text(json.dumps(doc))


def test_overlap_hidden_behind_an_empty_tensor_is_found(tmp_path: Path, no_reads: None) -> None:
    src = make_native(tmp_path, partition_bytes=1 << 20)  # one partition

    def edit(doc: dict[str, Any]) -> None:
        t = doc["tensors"]
        t["e.empty"].update(partition=0, offset=4096)
        t["a.weight"].update(offset=0)
        t["d.q"].update(partition=0, offset=8192)  # inside a.weight's 42 000 bytes, with e.empty between them
    _edit(src, edit)
    with pytest.raises(fmt.OverlappingTensorsError, match=r"'a\.weight' and 'd\.q'") as info:
        _load(src)
    assert info.value.path is not None
    assert info.value.path.endswith(fmt.INDEX)
    assert info.value.entry == "d.q"


def test_duplicate_tensor_names_are_refused(tmp_path: Path, no_reads: None) -> None:
    src = make_native(tmp_path)
    raw = (src / fmt.INDEX).read_text()
    doc = json.loads(raw)
    entry = json.dumps(doc["tensors"]["b.bias"])
    (src / fmt.INDEX).write_text(raw.replace('"tensors": {', f'"tensors": {{"b.bias": {entry}, ', 1))
    with pytest.raises(fmt.DuplicateTensorError, match=r"'b\.bias' appears twice"):
        _load(src)
    d = write_sllm(small_state_dict(), tmp_path / "sllm")
    raw = (d / SLLM_INDEX).read_text()
    first = json.dumps(json.loads(raw)["d.q"])
    (d / SLLM_INDEX).write_text(raw.replace("{", f'{{"d.q": {first}, ', 1))
    with pytest.raises(fmt.DuplicateTensorError):
        _load(d, format="sllm")


def test_element_count_past_2_pow_63_is_refused(tmp_path: Path, no_reads: None) -> None:
    src = make_native(tmp_path)
    _edit(src, lambda d: d["tensors"]["a.weight"].update(shape=[1 << 40, 1 << 40]))
    with pytest.raises(fmt.ElementCountError, match="2\\^63"):
        _load(src)


@pytest.mark.parametrize(("entry", "error"), [
    ([0, 2, [1 << 62, 1 << 62], [0, 0], "torch.float16"], fmt.ElementCountError),  # stride 0: one element, many
    ([0, 2, [10**30], [0], "torch.float16"], fmt.ElementCountError),
    ([0, 4, [2], [1 << 70], "torch.float16"], fmt.StrideError),
    ([0, 8, [2, 2], [2, 3], "torch.float16"], fmt.StrideError),  # reaches element 5 of a 4-element entry
])
def test_sllm_strides_that_read_outside_or_repeat_are_refused(tmp_path: Path, entry: list[Any],
                                                              error: type[Exception], no_reads: None) -> None:
    d = write_sllm(small_state_dict(), tmp_path / "sllm")
    _edit(d, lambda doc: doc.update(x=entry), SLLM_INDEX)
    with pytest.raises(error) as info:
        _within(lambda: _load(d, format="sllm"))
    assert info.value.entry == "x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("header", "data", "error", "needle"), [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [-8, 8]}}, bytes(16), "SafetensorsHeaderError",
     "non-negative"),
    ({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, bytes(16), "TensorBoundsError", "truncated"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, bytes(16), "TensorBoundsError", "needs"),
    ({"w": "nope"}, b"", "SafetensorsHeaderError", "not an object"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(16), "OverlappingTensorsError", "overlap"),
    ({"w": {"dtype": "F32", "shape": [1 << 62], "data_offsets": [0, 16]}}, bytes(16), "ElementCountError", "2\\^63"),
])
def test_malformed_safetensors_headers_are_named(tmp_path: Path, header: dict[str, Any], data: bytes, error: str,
                                                 needle: str, no_reads: None) -> None:
    from loaders.native import convert

    d = _safetensors(tmp_path, header=header, data=data)
    cls = getattr(fmt, error, None) or getattr(convert, error)
    with pytest.raises(cls, match=needle):
        _load(d, format="safetensors")


def test_safetensors_header_length_and_json_are_checked(tmp_path: Path, no_reads: None) -> None:
    from loaders.native.convert import SafetensorsHeaderError

    d = tmp_path / "bad"
    d.mkdir()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(SafetensorsHeaderError, match="header length"):
        _load(d, format="safetensors")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(SafetensorsHeaderError, match="not valid JSON"):
        _load(d, format="safetensors")


def test_huge_integers_in_the_index_are_named(tmp_path: Path, no_reads: None) -> None:
    src = make_native(tmp_path)
    raw = (src / fmt.INDEX).read_text()
    (src / fmt.INDEX).write_text(raw.replace('"alignment": 4096', '"alignment": ' + "9" * 5000, 1))
    with pytest.raises(fmt.IndexError_, match="not valid JSON"):
        _load(src)
    _edit(src := make_native(tmp_path / "2"), lambda d: d.update(chunk_bytes=1 << 64))
    with pytest.raises(fmt.IndexError_, match="2\\^63"):
        _load(src)


class _LyingServer:
    """Answers every request with the given Content-Length (and a short body)."""

    def __init__(self, length: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", length)
                self.end_headers()

            def do_HEAD(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()
                with contextlib.suppress(OSError):
                    self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(("length", "error"), [("9" * 5000, RemoteHTTPError), (str(1 << 62), RemoteTooLargeError)])
def test_huge_content_length_is_named(tmp_path: Path, length: str, error: type[Exception]) -> None:
    srv = _LyingServer(length)
    try:
        with pytest.raises(error):
            _within(lambda: NativeLoader(dram_dir=None, ssd_dir=str(tmp_path / "ssd"), remote_retries=0).load(
                f"{srv.url}/m", CPU))
    finally:
        srv.close()
    assert [p.name for p in (tmp_path / "ssd").iterdir() if p.name != LOCKS] == []


# -- 4. tiers: dead stagers' temps, a full file system, remote_to_dram -----------------------------------------------
_STAGER = """
import sys, time
from pathlib import Path
from loaders.native import tiers
from loaders.native.loader import NativeLoader

real = tiers._copy_file
def slow(src, dst):
    real(src, dst)
    Path(sys.argv[3]).write_text("copying")
    time.sleep(120)
tiers._copy_file = slow
NativeLoader(dram_dir=sys.argv[2], dram_capacity_bytes=1 << 30).stage_in_dram(Path(sys.argv[1]))
"""


def _temps(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if ".tmp-" in p.name]


def test_a_killed_stager_leaves_no_temp_after_the_next_start(tmp_path: Path) -> None:
    src = make_native(tmp_path)
    dram, ready = tmp_path / "dram", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _STAGER, str(src), str(dram), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), "the stager never started copying"
        assert len(_temps(dram)) == 1
        live = DramTier(dram, 1 << 30)  # a start while the stager lives: its temp stays, and counts
        assert len(_temps(dram)) == 1
        assert live.used_bytes() > 0
        assert live.entries() == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    NativeLoader(dram_dir=str(dram), dram_capacity_bytes=1 << 30)  # the next loader start
    assert _temps(dram) == []
    assert DramTier(dram, 1 << 30).used_bytes() == 0


def test_a_full_dram_filesystem_is_a_tier_capacity_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_native(tmp_path)

    def full(src: Path, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiers, "_copy_file", full)
    loader = NativeLoader(dram_dir=str(tmp_path / "dram"), dram_capacity_bytes=1 << 30)
    with pytest.raises(TierCapacityError, match="file system is full"):
        loader.stage_in_dram(src)
    assert [p.name for p in (tmp_path / "dram").iterdir() if p.name != LOCKS] == []


def test_remote_to_dram_on_a_full_dram_still_returns_the_remote_load(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    write_sllm(small_state_dict(), tmp_path / "srv" / "m")

    def full(src: Path, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiers, "_copy_file", full)
    loader = NativeLoader(ssd_dir=str(tmp_path / "ssd"), dram_dir=str(tmp_path / "dram"), remote_to_dram=True)
    with caplog.at_level("WARNING", logger="coldstart.native"):
        result = loader.load(f"file://{tmp_path / 'srv' / 'm'}", CPU)
    assert _equal(result.state_dict, small_state_dict())
    assert result.phases_s["dram_insert_failed"] == 1.0
    assert "could not be staged" in caplog.text


# -- 5. verify=auto: what it fingerprints, aged samples, remote sllm chunk sums ----------------------------------
def _flip_keeping_mtime(path: Path, pos: int) -> None:
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x01
    with open(path, "r+b") as f:
        f.write(raw)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_byte_changed_with_its_mtime_restored_is_caught(tmp_path: Path) -> None:
    src = make_native(tmp_path)
    assert NativeLoader(dram_dir=None).load(src, CPU).phases_s["verified"] == 1.0
    assert NativeLoader(dram_dir=None).load(src, CPU).phases_s["verified"] == 0.0
    _flip_keeping_mtime(sorted(src.glob("part-*.bin"))[0], 10)
    with pytest.raises(fmt.ChunkChecksumError):
        _load(src)


@contextlib.contextmanager
def _forged_marker(src: Path) -> Iterator[None]:
    """Keep the verified marker matching whatever the files' fingerprint becomes (corruption no stat shows)."""
    plan = NativeLoader(dram_dir=None)._plan(src, verify="never")
    yield
    doc = json.loads((src / VERIFIED).read_text())
    doc["fingerprint"] = NativeLoader(dram_dir=None)._plan(src, verify="never").fingerprint
    assert doc["fingerprint"] != plan.fingerprint
    (src / VERIFIED).write_text(json.dumps(doc))


def test_an_aged_verification_samples_chunks_until_it_finds_a_bad_one(tmp_path: Path) -> None:
    src = make_native(tmp_path, chunk_bytes=4096)
    NativeLoader(dram_dir=None).load(src, CPU)
    with _forged_marker(src):
        _flip_keeping_mtime(sorted(src.glob("part-*.bin"))[-1], 5)
    trusting = NativeLoader(dram_dir=None)  # verified a moment ago: trusted (the documented limit of auto)
    assert trusting.load(src, CPU).phases_s["verify_sampled_chunks"] == 0.0
    aged = NativeLoader(dram_dir=None, verify_max_age_s=0)
    n_chunks = sum(len(p.chunks) for p in fmt.read_index(src).partitions)
    sampled: list[float] = []

    def aged_loads() -> None:  # each aged load checks the next eighth of the chunks, until the bad one
        for _ in range(SAMPLE_FRACTION + 1):
            sampled.append(aged.load(src, CPU).phases_s["verify_sampled_chunks"])

    with pytest.raises(fmt.ChunkChecksumError):
        aged_loads()
    assert all(0 < n <= n_chunks for n in sampled)
    assert not (src / VERIFIED).exists()  # what was trusted is forgotten: the next load verifies everything
    with pytest.raises(fmt.ChunkChecksumError):
        _load(src)


def test_remote_sllm_gets_chunk_sums_so_its_ssd_copy_is_verified(tmp_path: Path) -> None:
    from loaders.native.integrity import CHUNKS
    from loaders.native.remote import url_key

    write_sllm(small_state_dict(), tmp_path / "srv" / "m", partition_bytes=8192)
    url = f"file://{tmp_path / 'srv' / 'm'}"
    loader = NativeLoader(ssd_dir=str(tmp_path / "ssd"), dram_dir=None, chunk_bytes=4096)
    first = loader.load(url, CPU)
    assert first.phases_s["checksums_recorded"] == 1.0
    local = tmp_path / "ssd" / url_key(url)
    assert (local / CHUNKS).exists()
    deadline = time.monotonic() + 10
    while not (local / VERIFIED).exists() and time.monotonic() < deadline:  # marked once durable
        time.sleep(0.05)
    second = loader.load(url, CPU)
    assert set(second.bytes_by_tier) == {"ssd"}
    assert second.phases_s["verified"] == 0.0
    assert _equal(second.state_dict, small_state_dict())
    _flip_keeping_mtime(local / "tensor.data_0", 100)
    with pytest.raises(fmt.ChunkChecksumError, match=r"tensor\.data_0"):
        loader.load(url, CPU)
