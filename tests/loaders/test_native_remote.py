"""Remote tier against a real nginx on 127.0.0.1: range reads, write-through to SSD, named errors, no partial entry."""

from __future__ import annotations

import errno
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.run import run_experiment
from loaders.native import remote_tier
from loaders.native.format import ChunkChecksumError
from loaders.native.loader import VERIFIED, NativeLoader
from loaders.native.remote import (
    RangeNotSupportedError,
    RemoteConnectionError,
    RemoteHTTPError,
    RemoteNotFoundError,
    RemoteShortReadError,
    url_key,
)
from loaders.native.sllm import write_sllm
from loaders.native.tiers import LOCKS, DramTier, TierCapacityError
from tests.conftest import model_spec
from tests.loaders.native_fixtures import small_state_dict
from tests.loaders.nginx import FaultyServer, Nginx, _free_port, nginx_fixture  # noqa: F401  (the fixture)

CPU = torch.device("cpu")


def _publish(ckpt_dir: Path, www: Path, name: str) -> Path:
    dst = www / name
    if not dst.exists():
        shutil.copytree(ckpt_dir, dst)
    return dst


def _visible(ssd: Path) -> list[str]:
    """What the SSD tier holds besides its lock directory (temp directories included)."""
    return sorted(p.name for p in ssd.iterdir() if p.name != LOCKS) if ssd.exists() else []


def _loader(tmp_path: Path, **kw: object) -> NativeLoader:
    kw.setdefault("dram_dir", None)
    return NativeLoader(ssd_dir=str(tmp_path / "ssd"), chunk_bytes=16384, remote_retries=1, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mapped", [True, False], ids=["ssd-files-mapped", "ring-write-through"])
@pytest.mark.parametrize("fmt", ["native", "safetensors"])
def test_remote_load_writes_through_then_ssd_serves(nginx: Nginx, shared_store: CheckpointStore, tmp_path: Path,
                                                    fmt: str, mapped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways of writing through: on CPU chunks go into the SSD-tier files, whose pages are then mapped as the
    tensors (here on a file system that cannot reserve blocks, the sparse-file case); through the (CUDA-shaped)
    ring they go to the destination and are written to the files beside."""
    monkeypatch.setattr(remote_tier, "_reserve", lambda fd, size: False)
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", fmt, progress=False)
    served = _publish(ckpt.path, nginx.root, f"wt-{fmt}")
    url = f"{nginx.url}/{served.name}"
    loader = _loader(tmp_path, threads=3, staging="auto" if mapped else "ring")
    first = loader.load(url, CPU)
    assert set(first.bytes_by_tier) == {"remote"}
    assert first.bytes_by_tier["remote"] >= ckpt.total_bytes
    assert verify_state_dict(ckpt, first.state_dict) == ckpt.total_bytes
    assert first.phases_s.get("mapped", 0.0) == float(mapped)
    local = tmp_path / "ssd" / url_key(url)
    assert _visible(tmp_path / "ssd") == [local.name]  # nothing else, no temp left
    for t in first.state_dict.values():  # the tensors are the caller's: writing them leaves the SSD copy intact
        t.zero_()
    del first
    for f in ckpt.files:  # the SSD copy is byte-identical to what the server holds
        assert (local / f.name).read_bytes() == f.read_bytes()
    if fmt == "native":  # checksummed entries are marked verified once durable (in the background when mapped)
        deadline = time.monotonic() + 10
        while not (local / VERIFIED).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (local / VERIFIED).exists()
    second = loader.load(url, CPU)
    assert set(second.bytes_by_tier) == {"ssd"}
    assert verify_state_dict(ckpt, second.state_dict) == ckpt.total_bytes
    loader.drop_remote_copies(url)
    assert _visible(tmp_path / "ssd") == []


def test_remote_sllm_through_the_ring_and_into_dram(nginx: Nginx, tmp_path: Path) -> None:
    """ServerlessLLM directories stream too; the (CUDA-shaped) ring stays smaller than the model; DRAM is filled."""
    sd = small_state_dict(3)
    write_sllm(sd, nginx.root / "sllm-ring", partition_bytes=8192)
    url = f"{nginx.url}/sllm-ring"
    loader = _loader(tmp_path, staging="ring", ring_bytes=32768, dram_dir=str(tmp_path / "dram"),
                     remote_to_dram=True)
    first = loader.load(url, CPU)
    assert set(first.bytes_by_tier) == {"remote"}
    for k, v in sd.items():
        assert torch.equal(first.state_dict[k], v), k
    assert [k for _, k, _ in DramTier(tmp_path / "dram").entries()] == [url_key(url)]
    hot = loader.load(url, CPU)
    assert set(hot.bytes_by_tier) == {"dram"}
    assert all(torch.equal(hot.state_dict[k], v) for k, v in sd.items())


def test_remote_file_url_through_fsspec(tmp_path: Path) -> None:
    write_sllm(small_state_dict(), tmp_path / "srv" / "m")
    loader = _loader(tmp_path)
    result = loader.load(f"file://{tmp_path / 'srv' / 'm'}", CPU)
    assert set(result.bytes_by_tier) == {"remote"}
    assert all(torch.equal(result.state_dict[k], v) for k, v in small_state_dict().items())


def test_missing_url_is_named_and_leaves_nothing(nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFoundError, match="no checkpoint there"):
        _loader(tmp_path).load(f"{nginx.url}/no-such-model", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_missing_data_file_is_named(nginx: Nginx, shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    served = _publish(ckpt.path, nginx.root, "gone-part")
    next(served.glob("part-*.bin")).unlink()
    with pytest.raises(RemoteNotFoundError, match="HTTP 404"):
        _loader(tmp_path).load(f"{nginx.url}/gone-part", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_server_error_is_retried_then_named(nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(RemoteHTTPError, match=r"HTTP 500.*after 2 tries"):
        _loader(tmp_path).load(f"{nginx.url}/status500/anything", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_server_without_ranges_is_named(nginx: Nginx, shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    _publish(ckpt.path, nginx.root, "norange-model")
    with pytest.raises(RangeNotSupportedError, match="206"):
        _loader(tmp_path).load(f"{nginx.url}/norange/norange-model", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_corrupted_remote_bytes_fail_their_checksum(nginx: Nginx, shared_store: CheckpointStore,
                                                    tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    served = _publish(ckpt.path, nginx.root, "flipped")
    part = next(served.glob("part-*.bin"))
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ChunkChecksumError, match="checksum"):
        _loader(tmp_path).load(f"{nginx.url}/flipped", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_truncated_remote_partition_is_named(nginx: Nginx, shared_store: CheckpointStore, tmp_path: Path) -> None:
    from loaders.native.format import PartitionSizeError

    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    served = _publish(ckpt.path, nginx.root, "truncated")
    part = next(served.glob("part-*.bin"))
    part.write_bytes(part.read_bytes()[:-4096])
    with pytest.raises(PartitionSizeError, match="truncated"):
        _loader(tmp_path).load(f"{nginx.url}/truncated", CPU)
    assert _visible(tmp_path / "ssd") == []


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_dropped_or_short_bodies_are_named(tmp_path: Path, mode: str) -> None:
    write_sllm(small_state_dict(), tmp_path / "www" / "m")
    with FaultyServer(tmp_path / "www", mode) as srv, pytest.raises(RemoteShortReadError, match="after 2 tries"):
        _loader(tmp_path).load(f"{srv.url}/m", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    write_sllm(small_state_dict(), tmp_path / "www" / "m")
    with FaultyServer(tmp_path / "www", "flaky", fail_first=2) as srv:
        loader = NativeLoader(ssd_dir=str(tmp_path / "ssd"), dram_dir=None, remote_retries=3)
        result = loader.load(f"{srv.url}/m", CPU)
    assert all(torch.equal(result.state_dict[k], v) for k, v in small_state_dict().items())


def test_connection_refused_is_named(tmp_path: Path) -> None:
    with pytest.raises(RemoteConnectionError, match="server is up"):
        _loader(tmp_path).load(f"http://127.0.0.1:{_free_port()}/m", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_full_disk_while_caching_leaves_nothing(nginx: Nginx, shared_store: CheckpointStore, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    _publish(ckpt.path, nginx.root, "full-disk")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(remote_tier, "pwrite_all", full)  # the pwrite path (CUDA, no fallocate)
    monkeypatch.setattr(remote_tier, "_reserve", full)  # the mapped path reserves the blocks first
    with pytest.raises(TierCapacityError, match="nothing partial"):
        _loader(tmp_path).load(f"{nginx.url}/full-disk", CPU)
    assert _visible(tmp_path / "ssd") == []


def test_two_loads_of_one_url_at_once(nginx: Nginx, shared_store: CheckpointStore, tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp32", "native", progress=False)
    _publish(ckpt.path, nginx.root, "together")
    url = f"{nginx.url}/together"
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(verify_state_dict(ckpt, _loader(tmp_path).load(url, CPU).state_dict))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == [ckpt.total_bytes] * 2
    assert _visible(tmp_path / "ssd") == [url_key(url)]


def test_loading_experiment_remote_state(compose_cfg: Callable[..., Any], nginx: Nginx, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """storage=remote + cache_states=[remote]: every native trial streams from nginx; loaders without a remote
    tier get unavailable rows; the remote ceiling is measured in the same run; no SSD copy outlives the run."""
    monkeypatch.setenv("COLDSTART_CACHE", str(tmp_path / "cache"))  # the loader's ssd_dir follows it
    store_root = nginx.root / f"store-{tmp_path.name}"
    cfg = compose_cfg(["model=tiny-opt", "trials=1", "loaders=[native,safetensors]", "cache_states=[remote]",
                       "storage=remote", f"storage.root={store_root}", "progress=false", "ceiling_max_bytes=1048576",
                       f"storage.remote_url={nginx.url}/{store_root.name}"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    trials = pd.read_parquet(out / "trials.parquet")
    native = trials[trials.loader == "native"]
    assert native.ok.all(), native.error.tolist()
    assert set(native.tier) == {"remote"}
    assert (native.bytes_remote >= native.bytes).all()
    assert (native.verified_bytes == native.bytes).all()
    assert set(native.ceiling_name) == {"remote_download"}
    assert (native.ceiling_gbps > 0).all()
    other = trials[trials.loader == "safetensors"]
    assert set(other.status) == {"unavailable"}
    assert "no remote tier" in other.error.iloc[0]
    assert _visible(tmp_path / "cache" / "remote-ssd") == []


def test_a_killed_fetch_leaves_only_a_hidden_temp_that_the_next_fetch_removes(nginx: Nginx, tmp_path: Path) -> None:
    """A SIGKILLed fetch leaves ``.<key>.tmp-<pid>-…`` (never a visible entry); the next fetch of it sweeps it."""
    import subprocess
    import sys

    write_sllm(small_state_dict(), nginx.root / "killed")
    url = f"{nginx.url}/killed"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "ssd" / f".{url_key(url)}.tmp-{int(dead.stdout)}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "tensor.data_0").write_bytes(b"half")
    assert _visible(tmp_path / "ssd") == [stale.name]  # hidden: no loader takes it for an entry
    _loader(tmp_path).load(url, CPU)
    assert _visible(tmp_path / "ssd") == [url_key(url)]


@pytest.mark.parametrize("behind", [True, False], ids=["write-behind", "write-through"])
@pytest.mark.parametrize("fmt", ["native", "safetensors", "sllm"])
def test_a_remote_load_into_an_arena_writes_the_ssd_copy_through(nginx: Nginx, shared_store: CheckpointStore,
                                                                 tmp_path: Path, fmt: str, behind: bool) -> None:
    """With a pool worker's arena the chunks land in it (no fresh memory) and go to the SSD tier's files with
    O_DIRECT where aligned, after the load (write-behind, the default) or during it; the SSD copy then serves the
    next load, byte for byte."""
    from loaders import arena

    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native" if fmt == "native" else "safetensors",
                               progress=False)
    src = ckpt.path
    if fmt == "sllm":
        src = tmp_path / "sllm-src"
        write_sllm(NativeLoader(dram_dir=None, format="safetensors").load(ckpt.path, CPU).state_dict, src)
    served = _publish(src, nginx.root, f"arena-{fmt}")
    made = arena.HostArena(4 << 20)
    previous = arena.install(made)
    try:
        loader = _loader(tmp_path, threads=2, remote_write_behind=behind)
        first = loader.load(f"{nginx.url}/{served.name}", CPU)
        assert first.phases_s["arena"] == 1.0
        assert first.info["path"] == "fetch→arena"
        assert (first.phases_s["write_behind"], first.phases_s["written_through"]) == (float(behind), float(not behind))
        assert verify_state_dict(ckpt, first.state_dict) == ckpt.total_bytes
        del first
        second = loader.load(f"{nginx.url}/{served.name}", CPU)
        assert set(second.bytes_by_tier) == {"ssd"}
        assert verify_state_dict(ckpt, second.state_dict) == ckpt.total_bytes
        for f in served.iterdir():  # the SSD-tier copy is the server's bytes (tails written buffered)
            if f.is_file() and not f.name.startswith("."):
                copy = tmp_path / "ssd" / url_key(f"{nginx.url}/{served.name}") / f.name
                assert copy.read_bytes() == f.read_bytes(), f.name
        del second
    finally:
        arena.install(previous)
        made.close()


def test_the_arena_stays_leased_until_its_bytes_are_written_behind(nginx: Nginx, shared_store: CheckpointStore,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The load returns with its copy still being written: the model unloaded, the arena is still not handed out
    (a later cold start would overwrite bytes being written), and is once the copy is published."""
    from loaders import arena

    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    served = _publish(ckpt.path, nginx.root, "arena-held")
    url = f"{nginx.url}/{served.name}"
    go = threading.Event()
    real_write = remote_tier.write_through

    def held(*args: Any) -> None:
        assert go.wait(60), "the test never released the writer"
        real_write(*args)

    monkeypatch.setattr(remote_tier, "write_through", held)
    made = arena.HostArena(4 << 20)
    previous = arena.install(made)
    try:
        loader = _loader(tmp_path, threads=2)
        first = loader.load(url, CPU)
        assert first.phases_s["write_behind"] == 1.0
        assert verify_state_dict(ckpt, first.state_dict) == ckpt.total_bytes
        settle = first.settle
        del first
        entry = str(tmp_path / "ssd" / url_key(url))
        other = _loader(tmp_path, threads=2)  # another loader object (a later trial's) sees this process's copy
        assert other.write_behind.pending() == [entry]
        assert made.lease(1 << 20) is None  # the writer still reads the arena
        assert _visible(tmp_path / "ssd")[0].startswith(".")  # only a hidden temp entry so far
        threading.Timer(0.3, go.set).start()
        assert settle() >= 0.2  # the caller's wait (outside its timed region) lasts until the copy is published
        del settle  # (it held the result, and so the model's tensors in the arena)
        assert other.write_behind.pending() == []
        assert other.write_behind.written_s[entry] > 0
        again = made.lease(1 << 20)
        assert again is not None
        del again
        second = other.load(url, CPU)
        assert set(second.bytes_by_tier) == {"ssd"}
        assert verify_state_dict(ckpt, second.state_dict) == ckpt.total_bytes
        del second
    finally:
        go.set()
        arena.install(previous)
        made.close()


def test_a_failed_write_behind_keeps_nothing_and_the_next_load_fetches_again(
        nginx: Nginx, shared_store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from loaders import arena

    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    served = _publish(ckpt.path, nginx.root, "arena-full")
    url = f"{nginx.url}/{served.name}"

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    made = arena.HostArena(4 << 20)
    previous = arena.install(made)
    try:
        loader = _loader(tmp_path, threads=2)
        with monkeypatch.context() as m:
            m.setattr(remote_tier, "write_through", full)
            first = loader.load(url, CPU)  # the load itself is whole: its bytes are in the arena
            assert verify_state_dict(ckpt, first.state_dict) == ckpt.total_bytes
            first.settle()
            del first
        assert "No space left" in loader.write_behind.failed[str(tmp_path / "ssd" / url_key(url))]
        assert "was not kept" in caplog.text
        assert _visible(tmp_path / "ssd") == []  # no entry, no temp left behind
        second = loader.load(url, CPU)
        assert set(second.bytes_by_tier) == {"remote"}
        assert verify_state_dict(ckpt, second.state_dict) == ckpt.total_bytes
        del second
    finally:
        arena.install(previous)
        made.close()
