"""The checkpoint tiers of a real run, physically: the remote store (the checkpoint store's directory), each
server's SSD directory and its DRAM tier (the native loader's shared-memory tier), and the file operations that
make them hold what the lifecycle's ``TierStore`` bookkeeping says.

Every operation here is slow (copies, staging) and runs on the server's own storage thread, in the order the
controller asked for them (``Site.work``), never on the controller's loop thread. The loop only snapshots the
bookkeeping (frozen sets) and hands it over.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checkpoints import CheckpointStore
from schedulers.base import Tier
from schedulers.catalog import base_name
from schedulers.real.agent import InProcessAgent, TierAgent

AGENT_CPUS = 0.01  # Ray CPUs a tier agent reserves: it only copies files
AGENT_TIMEOUT_S = 600.0  # one file operation of an agent (a checkpoint copy)
DOWNLOADS = ".download"  # a remote load's copy under the SSD directory, outside the SSD tier


@dataclass
class Site:
    """Where one server's tiers physically are: its SSD directory and DRAM-tier directory, the Ray node it is
    pinned to (``node:IP``; None: wherever the executor runs), the agent that moves its files (on that node), the
    storage thread its operations run on, and what that thread has made physically present."""

    sid: int
    ssd_dir: Path
    dram_dir: Path
    dram_bytes: int
    node: str | None = None
    agent: Any = None
    work: Any = None  # ``submit(fn, *args) -> Future``: this server's storage thread
    files: set[str] = field(default_factory=set)  # checkpoints copied into ssd_dir
    staged: set[str] = field(default_factory=set)  # checkpoints staged in the DRAM tier
    downloads: dict[str, str] = field(default_factory=dict)  # remote loads' downloads (path → checkpoint)

    def ssd_path(self, model: str) -> Path:
        return self.ssd_dir / model.replace("#", "_")

    def download_path(self, model: str, key: int) -> Path:
        """Where load ``key`` (an instance id) downloads ``model`` to: outside the SSD tier, its own directory."""
        return self.ssd_dir / DOWNLOADS / f"{model.replace('#', '_')}-{key}"

    def placement(self) -> dict[str, float] | None:
        """The Ray resources that pin a worker to this server's node (None: wherever the executor runs it)."""
        return {self.node: 0.001} if self.node else None


class TierOps:
    """Where each model's checkpoint is, and the copies that make a server's tiers hold it.

    ``remote``: a load downloads the store's checkpoint into the server's download directory (timed as
    ``download_s``) and loads it from there; ``ssd``: the server's copy; ``dram``: that copy staged in the server's
    DRAM tier (a load from DRAM gets the loader's DRAM tier, a load from another tier does not). The DRAM tier's
    entries are keyed by the SSD copy they were staged from, so that file stays while DRAM holds the checkpoint even
    after the SSD tier's bookkeeping evicted it (``docs/serverless_real.md``, backend differences).
    """

    def __init__(self, store: CheckpointStore | None, model_cfgs: dict[str, dict[str, Any]], models: list[str],
                 dtype: str, fmt: str, seed: int, loader_cfg: dict[str, Any],
                 paths: dict[str, Path] | None = None) -> None:
        self.loader_base = dict(loader_cfg)
        self.model_cfgs = model_cfgs
        self.paths: dict[str, Path] = dict(paths or {})
        self._specs: dict[str, Any] = {}
        if store is not None:
            from hydra.utils import instantiate

            for k, m in enumerate(models):  # replicas of one architecture get their own checkpoint (own seed)
                spec = instantiate(model_cfgs[base_name(m)])
                self._specs[m] = spec
                self.paths[m] = store.ensure(spec, dtype, fmt, seed + k, progress=False).path
        self.tiered = "dram_dir" in self.loader_base
        self.sites: list[Site] = []

    def model_cfg(self, model: str) -> dict[str, Any]:
        return self.model_cfgs[base_name(model)]

    def vocab_size(self, model: str) -> int:
        return int(self._specs[model].config().vocab_size) if model in self._specs else 1000

    def loader_cfg(self, site: Site, tier: Tier) -> dict[str, Any]:
        """The loader for a load from ``tier``: with the server's DRAM tier only when reading from it."""
        cfg = dict(self.loader_base)
        if self.tiered:
            cfg["dram_dir"] = str(site.dram_dir) if tier == "dram" else None
            cfg["dram_capacity_bytes"] = max(int(site.dram_bytes), 1)
        return cfg

    def start_agents(self, sites: list[Site], executor: Any) -> None:
        """The servers' tiers are ``sites``: give each its tier agent (an actor on its node when it has one, else an
        object here; a site that has one keeps it) and its storage thread."""
        from harness.executors.workers import start_worker

        self.sites = sites
        for s in sites:
            kwargs: dict[str, Any] = {"ssd_dir": str(s.ssd_dir), "dram_dir": str(s.dram_dir),
                                      "loader": self.loader_base}
            if s.agent is not None:
                pass
            elif s.node is None:
                s.agent = InProcessAgent(TierAgent(**kwargs))
            else:
                s.agent = start_worker(executor, "schedulers.real.agent:TierAgent", kwargs, name=f"tiers-server{s.sid}",
                                       num_cpus=AGENT_CPUS, resources=s.placement())
            if s.work is None:
                s.work = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tiers-server{s.sid}")

    # -------------------------------------------------------------- on the server's storage thread
    def prepare(self, site: Site, model: str, tier: Tier, key: int) -> tuple[Path, float]:
        """Make ``tier`` serve ``model`` to load ``key``: the path to load and the seconds spent downloading."""
        if tier == "remote":
            t0 = time.perf_counter()
            path = site.download_path(model, key)
            self._call(site, "copy_to_ssd", str(self.paths[model]), str(path))
            site.downloads[str(path)] = model
            return path, time.perf_counter() - t0
        self._file(site, model, frozenset([model]))
        if tier == "dram" and self.tiered and model not in site.staged:
            self._call(site, "stage", str(site.ssd_path(model)), int(site.dram_bytes))
            site.staged.add(model)
        return site.ssd_path(model), 0.0

    def reconcile(self, site: Site, ssd: frozenset[str], dram: frozenset[str], reading: frozenset[str]) -> None:
        """Make the server's tiers hold what the bookkeeping says (``ssd``, ``dram``); checkpoints being read
        (``reading``) keep their files, and downloads no longer read are removed."""
        for m in sorted((ssd | dram) - site.files):
            self._file(site, m, reading)
        if self.tiered:
            for m in sorted(site.staged - dram):
                self._call(site, "unstage", str(site.ssd_path(m)), int(site.dram_bytes))
                site.staged.discard(m)
            for m in sorted(dram - site.staged):
                self._call(site, "stage", str(site.ssd_path(m)), int(site.dram_bytes))
                site.staged.add(m)
        for m in sorted(site.files - ssd - dram - reading):
            self._call(site, "remove", str(site.ssd_path(m)))
            site.files.discard(m)
        for path, m in sorted(site.downloads.items()):
            if m not in reading:
                self._call(site, "remove", path)
                del site.downloads[path]

    def _file(self, site: Site, model: str, reading: frozenset[str]) -> None:
        """The checkpoint in the SSD directory: a download of it moved there (if no load reads one now), else a copy
        from the store."""
        if model in site.files:
            return
        done = [path for path, m in site.downloads.items() if m == model and m not in reading]
        if done:
            self._call(site, "move", done[0], str(site.ssd_path(model)))
            del site.downloads[done[0]]
        else:
            self._call(site, "copy_to_ssd", str(self.paths[model]), str(site.ssd_path(model)))
        site.files.add(model)

    def _call(self, site: Site, op: str, *args: Any) -> None:
        site.agent.call(op, *args, timeout_s=AGENT_TIMEOUT_S)

    def cleanup(self, sites: list[Site]) -> None:
        for s in sites:
            if s.work is not None:
                s.work.shutdown(wait=True, cancel_futures=True)
            if s.agent is None:
                shutil.rmtree(s.dram_dir, ignore_errors=True)
                continue
            try:
                s.agent.call("cleanup", timeout_s=AGENT_TIMEOUT_S)
            finally:
                s.agent.close()
                s.agent = None
