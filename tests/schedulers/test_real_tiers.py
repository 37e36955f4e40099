"""A real run's tiers follow the lifecycle's bookkeeping: ``TierOps.reconcile`` copies, stages, unstages and removes
exactly what the difference asks for (file operations recorded by a fake agent, nothing written)."""

from __future__ import annotations

from pathlib import Path

from schedulers.real.tiers import Site, TierOps
from tests.schedulers.scripted import NoFilesAgent

ROOT = Path("/nonexistent/tiers")


def _tiers() -> tuple[TierOps, Site, NoFilesAgent]:
    agent = NoFilesAgent()
    site = Site(0, ROOT / "ssd", ROOT / "dram", 10**9, agent=agent)
    tiers = TierOps(None, {m: {"name": m} for m in "abc"}, list("abc"), "fp16", "native", 0, {"dram_dir": None},
                    paths={m: ROOT / "store" / m for m in "abc"})
    return tiers, site, agent


def _ops(agent: NoFilesAgent) -> list[tuple[str, str]]:
    ops = [(op[0], Path(op[-2] if op[0] in ("stage", "unstage") else op[-1]).name) for op in agent.ops]
    agent.ops.clear()
    return ops


def test_reconcile_applies_the_bookkeeping_and_keeps_what_dram_is_staged_from() -> None:
    tiers, site, agent = _tiers()
    tiers.reconcile(site, frozenset("a"), frozenset(), frozenset())
    assert _ops(agent) == [("copy_to_ssd", "a")]
    tiers.reconcile(site, frozenset("ab"), frozenset("b"), frozenset())
    assert _ops(agent) == [("copy_to_ssd", "b"), ("stage", "b")]
    tiers.reconcile(site, frozenset("a"), frozenset("b"), frozenset())  # the SSD tier evicted b, DRAM holds it
    assert _ops(agent) == []  # b's SSD file stays: the DRAM tier's entry is keyed by it
    tiers.reconcile(site, frozenset(), frozenset(), frozenset("a"))  # a is being read: its file stays
    assert _ops(agent) == [("unstage", "b"), ("remove", "b")]
    tiers.reconcile(site, frozenset(), frozenset(), frozenset())
    assert _ops(agent) == [("remove", "a")]
    assert site.files == site.staged == set()


def test_a_download_becomes_the_ssd_copy_once_no_load_reads_it_or_goes() -> None:
    tiers, site, agent = _tiers()
    path, _ = tiers.prepare(site, "c", "remote", 7)
    assert path == site.download_path("c", 7)
    assert _ops(agent) == [("copy_to_ssd", "c-7")]
    tiers.reconcile(site, frozenset("c"), frozenset(), frozenset("c"))  # still read: the SSD copy comes from the store
    assert _ops(agent) == [("copy_to_ssd", "c")]
    tiers.reconcile(site, frozenset("c"), frozenset(), frozenset())  # read no more: the download goes
    assert _ops(agent) == [("remove", "c-7")]
    tiers.prepare(site, "a", "remote", 8)
    tiers.reconcile(site, frozenset("ac"), frozenset(), frozenset())  # kept by the SSD tier: moved, not copied
    assert _ops(agent) == [("copy_to_ssd", "a-8"), ("move", "a")]
    assert site.downloads == {}


def test_a_dram_load_gets_the_dram_tier_and_a_load_from_another_tier_does_not() -> None:
    tiers, site, agent = _tiers()
    path, download_s = tiers.prepare(site, "a", "dram", 1)
    assert (path, download_s) == (site.ssd_path("a"), 0.0)
    assert _ops(agent) == [("copy_to_ssd", "a"), ("stage", "a")]
    assert tiers.loader_cfg(site, "dram")["dram_dir"] == str(site.dram_dir)
    assert tiers.loader_cfg(site, "ssd")["dram_dir"] is None
