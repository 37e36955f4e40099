"""The checkpoint tiers of a real run: the remote store (the checkpoint store's directory), each server's SSD
directory, and each server's DRAM tier (the native loader's shared-memory tier), with the policy's tier → path."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from harness.checkpoints import CheckpointStore
from schedulers.base import Tier
from schedulers.catalog import base_name
from schedulers.real.agent import InProcessAgent, TierAgent
from schedulers.real.slots import LiveServer

AGENT_CPUS = 0.01  # Ray CPUs a tier agent reserves: it only copies files
AGENT_TIMEOUT_S = 600.0  # one file operation of an agent (a checkpoint copy)


class TierOps:
    """Where each model's checkpoint is, and the copies that make a tier hold it.

    ``remote``: the store's checkpoint, copied into the server's SSD directory before loading (the download);
    ``ssd``: the server's copy; ``dram``: the server's copy staged in its DRAM tier (needs a loader with one).
    """

    def __init__(self, store: CheckpointStore, model_cfgs: dict[str, dict[str, Any]], models: list[str],
                 dtype: str, fmt: str, seed: int, loader_cfg: dict[str, Any], sizes: dict[str, int]) -> None:
        from hydra.utils import instantiate

        self.loader_base = {k: v for k, v in loader_cfg.items()}
        self.model_cfgs, self.sizes = model_cfgs, sizes
        self.paths: dict[str, Path] = {}
        self._specs: dict[str, Any] = {}
        for k, m in enumerate(models):  # replicas of one architecture get their own checkpoint (own seed)
            spec = instantiate(model_cfgs[base_name(m)])
            self._specs[m] = spec
            self.paths[m] = store.ensure(spec, dtype, fmt, seed + k, progress=False).path
        self.tiered = "dram_dir" in self.loader_base

    def model_cfg(self, model: str) -> dict[str, Any]:
        return self.model_cfgs[base_name(model)]

    def vocab_size(self, model: str) -> int:
        return int(self._specs[model].config().vocab_size)

    def loader_cfg(self, server: LiveServer) -> dict[str, Any]:
        cfg = dict(self.loader_base)
        if self.tiered:
            cfg["dram_dir"] = str(server.dram_dir)
            cfg["dram_capacity_bytes"] = max(int(server.dram.capacity_bytes), 1)
        return cfg

    def start_agents(self, servers: list[LiveServer], executor: Any) -> None:
        """Give each server its tier agent: an actor on the server's node when it has one, else an object here."""
        from harness.executors.workers import start_worker

        for s in servers:
            kwargs: dict[str, Any] = {"ssd_dir": str(s.ssd_dir), "dram_dir": str(s.dram_dir),
                                      "loader": self.loader_base}
            if s.node is None:
                s.agent = InProcessAgent(TierAgent(**kwargs))
            else:
                s.agent = start_worker(executor, "schedulers.real.agent:TierAgent", kwargs, name=f"tiers-server{s.sid}",
                                       num_cpus=AGENT_CPUS, resources=s.placement())

    def preload_ssd(self, server: LiveServer, model: str) -> None:
        """Put ``model``'s checkpoint in the server's SSD tier (a copy of the remote store's); LRU-evicts."""
        server.agent.call("copy_to_ssd", str(self.paths[model]), str(server.ssd_path(model)), timeout_s=AGENT_TIMEOUT_S)
        for victim in server.ssd.insert(model, self.sizes[model]) or []:
            server.agent.call("remove", str(server.ssd_path(victim)), timeout_s=AGENT_TIMEOUT_S)

    def prepare(self, server: LiveServer, model: str, tier: str) -> tuple[Path, float]:
        """Make ``tier`` serve ``model`` on ``server``: returns the path to load and the download time."""
        download_s = 0.0
        if tier == "remote" or model not in server.ssd:
            t0 = time.perf_counter()
            self.preload_ssd(server, model)
            download_s = time.perf_counter() - t0
        path = server.ssd_path(model)
        if self.tiered:
            if tier == "dram":
                self._dram(server, "stage", path)
            else:  # this load must not be served by a DRAM copy
                self._dram(server, "unstage", path)
                server.dram.discard(model)
        return path, download_s

    def after_load(self, server: LiveServer, model: str, cache_to: tuple[str, ...]) -> None:
        """Keep the copies the placement asked for (ServerlessLLM's store: DRAM and SSD, when they fit)."""
        self.demote(server, model, cache_to)  # type: ignore[arg-type]

    def demote(self, server: LiveServer, model: str, tiers: tuple[Tier, ...]) -> None:
        if "ssd" in tiers and model not in server.ssd:
            self.preload_ssd(server, model)
        if "dram" in tiers and self.tiered:
            evicted = server.dram.insert(model, self.sizes[model])
            if evicted is None:
                return
            for victim in evicted:
                self._dram(server, "unstage", server.ssd_path(victim))
            self._dram(server, "stage", server.ssd_path(model))

    def _dram(self, server: LiveServer, op: str, path: Path) -> None:
        server.agent.call(op, str(path), int(server.dram.capacity_bytes), timeout_s=AGENT_TIMEOUT_S)

    def cleanup(self, servers: list[LiveServer]) -> None:
        for s in servers:
            if s.agent is None:
                shutil.rmtree(s.dram_dir, ignore_errors=True)
                continue
            try:
                s.agent.call("cleanup", timeout_s=AGENT_TIMEOUT_S)
            finally:
                s.agent.close()
                s.agent = None
