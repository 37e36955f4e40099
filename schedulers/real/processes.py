"""Where a real run's instance processes come from: one source per server from the run's runtime (``fresh``
starts a process per cold start; ``pool`` keeps pre-started ones, filled before the first arrival), each process
pinned to its server's node and started within the slot's budgets; at the end, none is left running."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from harness.executors.workers import start_worker
from runtimes.base import ProcessSource, Runtime
from runtimes.workerpool import PoolError
from schedulers.real.config import ProcessConfig
from schedulers.real.tiers import Site

log = logging.getLogger("coldstart.schedulers.real")


class ProcessSources:
    """``sources[server]``: each server's ``ProcessSource``; ``started``: every process any of them started."""

    def __init__(self, runtime: Runtime, executor: Any, cfg: ProcessConfig, host_kwargs: dict[str, Any]) -> None:
        self.runtime, self.executor, self.cfg, self.host_kwargs = runtime, executor, cfg, dict(host_kwargs)
        self.sources: list[ProcessSource] = []
        self.started: list[Any] = []

    def start(self, sites: list[Site]) -> None:
        """One source per server; pools are filled before the first arrival (they are pre-started), within the
        runtime's ``start_timeout_s``: a pool that cannot fill (e.g. a Ray cluster without the CPUs or GPUs for
        size × servers workers) is an error naming what was ready, not a silent wait."""
        for site in sites:
            self.sources.append(self.runtime.source(self._starter(site), f"s{site.sid}"))
        timeout_s = float(getattr(self.runtime, "start_timeout_s", 600.0))
        fills = [s for s in self.sources if getattr(s, "wait_full", None) is not None]
        if fills:
            log.info("filling %d pools of %d workers (each start: imports, device init, warm-up)", len(fills),
                     int(getattr(self.runtime, "size", 1)))
        for source in fills:
            try:
                source.wait_full(timeout_s)  # type: ignore[attr-defined]
            except PoolError as exc:
                raise PoolError(f"{exc} (a pool holds its workers' resources ahead of time: on Ray the nodes need "
                                f"CPUs/GPUs for size × servers workers plus the replacements)") from None

    def _starter(self, site: Site) -> Callable[[str], Any]:
        """How a server starts an instance process: pinned to its node on Ray, within the slot's budgets."""
        p = self.cfg
        kwargs = {"dtype": p.dtype, "device": p.device, **self.host_kwargs}

        def start(name: str) -> Any:
            handle = start_worker(self.executor, "schedulers.real.instance:ModelInstance", kwargs, name=name,
                                  num_cpus=p.slot_threads, memory_bytes=p.slot_memory_bytes,
                                  resources=site.placement())
            self.started.append(handle)
            return handle

        return start

    def close(self, in_use: list[Any]) -> None:
        """Close the processes still in use (idle, busy or loading), the sources (a pool's idle workers and its refill
        thread), and kill any process they started that still runs."""
        for handle in in_use:
            try:
                handle.close(timeout_s=5)
            except Exception:  # a dead one is fine
                handle.kill()
        for source in self.sources:
            source.close()
        for handle in self.started:  # closes still queued when the pool stopped, or started meanwhile
            if handle.alive():
                handle.kill()

    def stats(self) -> dict[str, Any]:
        """The runtime's name and what its sources did: worker starts and their median seconds (pool refills)."""
        starts = [t for src in self.sources for t in src.stats.get("start_s", [])]
        out: dict[str, Any] = {"runtime": self.runtime.name,
                               "pool_size": int(getattr(self.runtime, "size", 0)) if self.runtime.name == "pool" else 0,
                               "pool_refill": str(getattr(self.runtime, "refill", "")),
                               "worker_starts": len(starts),
                               "worker_start_s": float(sorted(starts)[len(starts) // 2]) if starts else math.nan}
        for key in ("replaced_dead", "recycled", "reused", "discarded"):
            out[f"workers_{key}"] = sum(int(src.stats.get(key, 0)) for src in self.sources)
        return out
