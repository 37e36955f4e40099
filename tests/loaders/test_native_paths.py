"""The native loader's read paths: O_DIRECT, buffered and mapped reads give the same tensors (the manifest's) in every
cache state; ``auto`` takes the path a probe measured fastest (cached per disk) and says so; fresh memory is faulted
in ahead of the readers; mappings sit on 2 MiB boundaries; the DRAM tier puts its entries on huge pages where the
kernel allows and a hot load reports it."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.checkpoints import Checkpoint, CheckpointStore, verify_state_dict
from harness.modelbuild import materialize
from loaders.native import probe
from loaders.native.loader import NativeLoader
from loaders.native.mapping import HUGE, map_file
from loaders.native.pipeline import Segment, aligned_empty, run_pipeline
from loaders.native.sllm import write_sllm
from loaders.pagecache import evict, warm
from tests.conftest import model_spec

CPU = torch.device("cpu")
PATHS = {"map": {"staging": "map"}, "direct": {"staging": "direct", "direct_io": "on"},
         "buffered": {"staging": "direct", "direct_io": "off"}, "ring": {"staging": "ring", "direct_io": "on"}}


@pytest.fixture
def shm() -> Iterator[Path]:
    """A DRAM-tier directory on tmpfs (what the tier is in production), removed afterwards."""
    path = Path("/dev/shm") / f"coldstart-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ckpt(store: CheckpointStore, fmt: str, tmp: Path) -> tuple[Path, Checkpoint]:
    if fmt != "sllm":
        ckpt = store.ensure(model_spec("tiny-opt"), "fp16", fmt, progress=False)
        return ckpt.path, ckpt
    ckpt = store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", progress=False)
    from loaders.safetensors import SafetensorsLoader

    dst = tmp / "sllm"
    write_sllm(SafetensorsLoader().load(ckpt.path, CPU).state_dict, dst)
    return dst, ckpt


@pytest.mark.parametrize("fmt", ["native", "safetensors", "sllm"])
@pytest.mark.parametrize("state", ["cold", "warm", "hot"])
def test_every_path_gives_the_manifests_tensors_in_every_cache_state(shared_store: CheckpointStore, tmp_path: Path,
                                                                     shm: Path, fmt: str, state: str) -> None:
    path, ckpt = _ckpt(shared_store, fmt, tmp_path)
    files = [p for p in path.iterdir() if p.is_file()]
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for name, knobs in PATHS.items():
        loader = NativeLoader(format=fmt, dram_dir=str(shm), chunk_bytes=16384, ring_bytes=65536,
                              probe={"cache": None}, **knobs)
        if state == "hot":
            loader.stage_in_dram(path)
        else:
            loader.unstage_from_dram(path)
            if state == "cold":
                assert evict(files) < 0.5
            else:
                assert warm(files, fresh=True) == 1.0
        result = loader.load(path, CPU)
        materialize(result.state_dict, CPU)
        assert set(result.bytes_by_tier) == ({"dram"} if state == "hot" else {"ssd"})
        if state != "hot":  # the DRAM tier is tmpfs: no O_DIRECT there, its files are mapped unless staged otherwise
            assert result.phases_s["direct_io"] == float(knobs.get("direct_io") == "on" and name != "map")
            assert result.phases_s["mapped"] == float(name == "map")
        assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes, f"{name} {state}"
        loaded[name] = {k: v.clone() for k, v in result.state_dict.items()}
        del result  # a live mapping would keep the next cold trial's pages in the page cache
    ref = loaded["map"]
    for name, sd in loaded.items():
        assert sd.keys() == ref.keys()
        for key, t in sd.items():
            assert torch.equal(t.view(torch.uint8) if t.numel() else t, ref[key].view(torch.uint8)
                               if ref[key].numel() else ref[key]), f"{name}: {key}"


def test_candidates_follow_the_knobs() -> None:
    assert probe.candidates("cpu", "auto", "auto") == ("map", "direct", "buffered")
    assert probe.candidates("cpu", "auto", "on") == ("direct",)
    assert probe.candidates("cpu", "auto", "off") == ("map", "buffered")
    assert probe.candidates("cpu", "map", "auto") == ("map",)
    assert probe.candidates("cpu", "direct", "auto") == ("direct", "buffered")
    assert probe.candidates("cuda", "auto", "auto") == ("direct", "buffered")


def test_choose_takes_the_fastest_measured_path_for_state_and_destination() -> None:
    record = {"gbps": {"cpu/cold/fresh/map": 1.0, "cpu/cold/fresh/direct": 2.0, "cpu/cold/fresh/buffered": 1.5,
                       "cpu/cold/arena/direct": 1.8, "cpu/cold/arena/buffered": 2.5,
                       "cpu/warm/fresh/map": 9.0, "cpu/warm/fresh/direct": 1.0, "cpu/warm/fresh/buffered": 4.0},
              "choice": {"fresh_huge": True}}
    allowed = probe.candidates("cpu", "auto", "auto")
    assert probe.choose(allowed, record, "cpu", "cold", "fresh") == probe.PathChoice("direct", True, "probe")
    assert probe.choose(allowed, record, "cpu", "cold", "arena").path == "buffered"
    assert probe.choose(allowed, record, "cpu", "warm", "arena").path == "map"  # a mapping's rate, whatever the dest
    assert probe.choose(("direct",), record, "cpu", "warm", "fresh") == probe.PathChoice("direct", True, "setting")
    assert probe.choose(allowed, None, "cpu", "cold", "fresh") == probe.PathChoice("direct", False, "default")
    thp = {"gbps": {"cpu/cold/fresh/map": 2.0, "cpu/cold/fresh/direct": 1.0, "cpu/cold/fresh/direct-thp": 3.0,
                    "cpu/cold/arena/direct": 1.0}, "choice": {"fresh_huge": True}}
    assert probe.choose(allowed, thp, "cpu", "cold", "fresh") == probe.PathChoice("direct", True, "probe")
    assert probe.choose(allowed, thp, "cpu", "cold", "arena") == probe.PathChoice("map", False, "probe")
    assert probe.choose(allowed, None, "cpu", "warm", "fresh").path == "map"


def test_a_cold_load_bigger_than_the_probe_needs_a_clear_lead_to_go_through_the_page_cache() -> None:
    """The probe's slice does not show a whole checkpoint filling the page cache: past its size, O_DIRECT keeps
    a near tie (buffered 1 % ahead), and loses only to a clear lead; the slice's own size decides as measured."""
    tie = {"gbps": {"cpu/cold/fresh/direct": 1.51, "cpu/cold/fresh/buffered": 1.53, "cpu/warm/fresh/map": 4.0,
                    "cpu/warm/fresh/buffered": 5.0}, "probe_bytes": 512 << 20, "choice": {}}
    allowed = probe.candidates("cpu", "auto", "auto")
    assert probe.choose(allowed, tie, "cpu", "cold", "fresh", load_bytes=2_630_000_000).path == "direct"
    assert probe.choose(allowed, tie, "cpu", "cold", "fresh", load_bytes=256 << 20).path == "buffered"
    assert probe.choose(allowed, tie, "cpu", "warm", "fresh", load_bytes=2_630_000_000).path == "buffered"
    lead = {**tie, "gbps": {**tie["gbps"], "cpu/cold/fresh/buffered": 1.51 * (1 + probe.PAGE_CACHE_MARGIN) + 0.01}}
    assert probe.choose(allowed, lead, "cpu", "cold", "fresh", load_bytes=2_630_000_000).path == "buffered"


def test_fresh_huge_pages_only_for_a_load_the_probe_slice_covered() -> None:
    """Huge pages' first touch slows as the kernel compacts memory, which a slice does not reach: a larger load
    keeps 4 KiB pages, and its O_DIRECT rate against the other paths is the 4 KiB one."""
    record = {"gbps": {"cpu/cold/fresh/direct": 1.33, "cpu/cold/fresh/direct-thp": 1.51,
                       "cpu/cold/fresh/buffered": 1.45}, "probe_bytes": 512 << 20,
              "choice": {"fresh_huge": True}}
    allowed = probe.candidates("cpu", "auto", "auto")
    small = probe.choose(allowed, record, "cpu", "cold", "fresh", load_bytes=256 << 20)
    assert small == probe.PathChoice("direct", True, "probe")  # measured: thp 1.51 beats buffered 1.45
    big = probe.choose(allowed, record, "cpu", "cold", "fresh", load_bytes=2_630_000_000)
    assert big == probe.PathChoice("direct", False, "probe")  # 1.33 with the margin ahead of buffered, on 4 KiB pages
    assert probe.choose(("direct",), record, "cpu", "cold", "fresh", load_bytes=2_630_000_000).huge is False
    assert probe.choose(("direct",), record, "cpu", "cold", "fresh", load_bytes=256 << 20).huge is True


def test_a_cached_measurement_decides_the_path_and_the_result_says_so(shared_store: CheckpointStore,
                                                                      tmp_path: Path) -> None:
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "native", progress=False)
    cache = tmp_path / "probe.json"
    loader = NativeLoader(dram_dir=None, probe={"cache": str(cache)})
    plan = loader._plan(ckpt.path)
    biggest = max(plan.files, key=lambda p: p.stat().st_size)
    key = probe.probe_key(biggest, "cpu", loader.threads, max(s.length for s in plan.segments))
    for winner in ("buffered", "map", "direct"):
        gbps = {f"cpu/cold/fresh/{p}": (9.0 if p == winner else 1.0) for p in probe.CPU_PATHS}
        probe.ProbeCache(cache).put(key, {"gbps": gbps, "choice": {}, "quick": False})
        evict(ckpt.files)
        result = loader.load(ckpt.path, CPU)
        assert result.info["path_source"] == "probe"
        assert result.info["path"] == ("map" if winner == "map" else f"{winner}→fresh")
        assert result.phases_s["path_probed"] == 1.0
        assert result.phases_s["probe_s"] == 0.0
        assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
        del result
    # direct_io=on leaves one path, but the page size of its fresh memory is still the probe's measured choice
    assert probe.decides(("direct",), "cpu")
    assert not probe.decides(("direct",), "arena")
    assert not probe.decides(("direct",), "cuda")
    only_direct = NativeLoader(dram_dir=None, direct_io="on", probe={"cache": str(cache)})
    for huge in (True, False):
        gbps = {"cpu/cold/fresh/direct": 1.0, "cpu/cold/fresh/direct-thp": 2.0 if huge else 0.5}
        probe.ProbeCache(cache).put(key, {"gbps": gbps, "choice": probe.path_choices(gbps), "quick": False,
                                          "probe_bytes": 1 << 30})
        evict(ckpt.files)
        result = only_direct.load(ckpt.path, CPU)
        assert (result.info["path"], result.info["path_source"]) == (f"direct→fresh{'-thp' if huge else ''}",
                                                                     "setting")
        assert result.phases_s["fresh_huge"] == float(huge)
        assert verify_state_dict(ckpt, result.state_dict) == ckpt.total_bytes
        del result


def test_measure_times_every_candidate_and_restores_the_page_cache(tmp_path: Path) -> None:
    data = tmp_path / "part.bin"
    data.write_bytes(torch.randint(0, 255, (12 << 20,), dtype=torch.uint8).numpy().tobytes())
    evict([data])
    record = probe.measure(data, CPU, threads=2, chunk_bytes=1 << 20, probe_bytes=8 << 20, repeats=1)
    expected = {f"cpu/{s}/{d}/{p}" for s in ("cold", "warm") for d, p in
                (("fresh", "map"), ("fresh", "direct"), ("fresh", "buffered"), ("arena", "direct"),
                 ("arena", "buffered"))} | {"cpu/cold/fresh/direct-thp"}
    assert set(record["gbps"]) == expected
    assert all(v > 0 for v in record["gbps"].values())
    assert record["probe_bytes"] == 8 << 20
    assert set(record["choice"]) == {"cpu/cold/fresh", "cpu/cold/arena", "cpu/warm/fresh", "cpu/warm/arena",
                                     "fresh_huge"}
    from loaders.pagecache import resident_fraction

    assert resident_fraction([data]) < 0.5  # it was cold, it is cold again
    cache = probe.ProbeCache(tmp_path / "c.json")
    cache.put("k", record)
    assert cache.get("k") == json.loads(json.dumps(record))
    assert probe.ProbeCache(None).get("k") is None


def test_prepare_measures_once_and_trials_read_it(shared_store: CheckpointStore, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big"
    from loaders.native.convert import convert

    convert({"w": torch.zeros(10 << 20, dtype=torch.uint8)}, big, progress=False)  # enough to measure
    calls = []
    real = probe.measure

    def counting(*args: object, **kwargs: object) -> dict[str, object]:
        calls.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(probe, "measure", counting)
    loader = NativeLoader(dram_dir=None, probe={"cache": str(tmp_path / "p.json"), "bytes": 8 << 20})
    record = loader.prepare(big, CPU)
    assert record is not None
    assert len(calls) == 1
    assert loader.prepare(big, CPU) == record
    assert len(calls) == 1
    result = NativeLoader(dram_dir=None, probe={"cache": str(tmp_path / "p.json")}).load(big, CPU)
    assert result.info["path_source"] == "probe"
    assert len(calls) == 1
    assert NativeLoader(dram_dir=None, staging="map", probe={"cache": None}).prepare(big, CPU) is None  # one path
    # O_DIRECT only (direct_io=on): still the page size of its fresh memory to measure
    assert NativeLoader(dram_dir=None, direct_io="on", probe={"cache": None}).prepare(big, CPU) is not None


def test_fresh_memory_is_faulted_in_ahead_of_the_readers(tmp_path: Path) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(b"\x07" * (8 << 20))
    segs = [Segment(data, off, 1 << 20, off) for off in range(0, 8 << 20, 1 << 20)]

    def slow_fetch(seg: Segment, view: memoryview) -> None:
        time.sleep(0.05)  # a slow disk: the prefault thread gets ahead
        with open(seg.path, "rb") as f:
            f.seek(seg.file_offset)
            f.readinto(view)

    dest = aligned_empty(8 << 20)
    stats = run_pipeline(segs, dest, 1, direct=False, fetch=slow_fetch, prefault=True)
    assert stats.faulted_bytes >= 6 << 20
    assert stats.fault_s > 0
    assert int(dest.sum()) == 7 * (8 << 20)
    plain = run_pipeline(segs, aligned_empty(8 << 20), 1, direct=False, fetch=slow_fetch)
    assert plain.faulted_bytes == 0


def test_mappings_start_on_2_mib_boundaries(tmp_path: Path) -> None:
    data = tmp_path / "m.bin"
    data.write_bytes(b"\x01" * (3 << 20))
    fm, tensor = map_file(data)
    assert fm is not None
    assert fm.address % HUGE == 0
    assert tensor.data_ptr() == fm.address
    assert tensor.numel() == 3 << 20
    assert int(tensor.sum()) == 3 << 20
    tensor[0] = 9  # private: the file is untouched
    assert data.read_bytes()[0] == 1


def test_the_dram_tier_records_its_huge_pages_and_a_hot_load_reports_them(shared_store: CheckpointStore,
                                                                          shm: Path, tmp_path: Path) -> None:
    from loaders.native.convert import convert
    from loaders.native.hugetmpfs import MADV_COLLAPSE
    from loaders.native.mapping import pmd_mapped_bytes

    src = tmp_path / "ck"
    convert({"w": torch.arange(3 << 20, dtype=torch.int32)}, src, progress=False)  # 12 MiB
    loader = NativeLoader(dram_dir=str(shm), probe={"cache": None})
    entry = loader.stage_in_dram(src)
    recorded = json.loads((entry / ".huge_pages.json").read_text())
    part = entry / "part-00000.bin"
    assert recorded["bytes"] == part.stat().st_size
    # an independent look: how much of a fresh mapping of the staged file maps 2 MiB at a time
    fm, tensor = map_file(part)
    assert fm is not None
    int(tensor[::HUGE].sum())
    seen = pmd_mapped_bytes(fm)
    del tensor, fm
    assert abs(seen - recorded["huge_bytes"]) <= HUGE
    hot = loader.load(src, CPU)
    assert hot.phases_s["dram_huge_fraction"] == pytest.approx(recorded["huge_bytes"] / recorded["bytes"])
    assert torch.equal(hot.state_dict["w"], torch.arange(3 << 20, dtype=torch.int32))
    try:  # where the kernel allows MADV_COLLAPSE on tmpfs (6.1+, shmem_enabled not deny), most of it is huge
        scratch = shm / "probe.bin"
        scratch.write_bytes(b"\0" * (4 << 20))
        fm2, _ = map_file(scratch, shared=True)
        assert fm2 is not None
        fm2.madvise(MADV_COLLAPSE, 0, 4 << 20)
    except OSError:
        return
    assert recorded["huge_bytes"] >= recorded["bytes"] - 2 * HUGE
