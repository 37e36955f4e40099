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
from schedulers.real.slots import LiveServer


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

    def _loader(self, server: LiveServer) -> Any:
        from harness.trial import instantiate

        return instantiate(self.loader_cfg(server))

    def preload_ssd(self, server: LiveServer, model: str) -> None:
        server.copy_to_ssd(model, self.paths[model], self.sizes[model])

    def prepare(self, server: LiveServer, model: str, tier: str) -> tuple[Path, float]:
        """Make ``tier`` serve ``model`` on ``server``: returns the path to load and the download time."""
        download_s = 0.0
        if tier == "remote" or model not in server.ssd:
            t0 = time.perf_counter()
            self.preload_ssd(server, model)
            download_s = time.perf_counter() - t0
        path = server.ssd_path(model)
        if self.tiered:
            loader = self._loader(server)
            if tier == "dram":
                loader.stage_in_dram(path)
            else:  # this load must not be served by a DRAM copy
                loader.unstage_from_dram(path)
                server.dram.items.pop(model, None)
                server.dram.used_bytes = sum(server.dram.items.values())
                server.dram._names = None
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
            loader = self._loader(server)
            for victim in evicted:
                loader.unstage_from_dram(server.ssd_path(victim))
            loader.stage_in_dram(server.ssd_path(model))

    def cleanup(self, servers: list[LiveServer]) -> None:
        for s in servers:
            shutil.rmtree(s.dram_dir, ignore_errors=True)
