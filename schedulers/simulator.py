"""The serverless simulator: the shared lifecycle (``schedulers/lifecycle.py``) on a simulated clock, with a
backend that models what the real controller does for real — loads as bytes over fair-shared tier links after the
runtime's start-up (the ``pool`` runtime's workers on a per-server clock), requests as prefill + decode from the
model's profile, live-migration rounds computed from the tokens a running request produces."""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from schedulers.base import KeepAlive, ModelInfo, Scheduler
from schedulers.clock import SimClock
from schedulers.cluster import Cluster
from schedulers.errors import SimulatorInvariantError
from schedulers.lifecycle import Lifecycle, LifecycleConfig
from schedulers.links import FairShareLink
from schedulers.poolclock import WorkerPoolClock
from schedulers.state import Instance, LoadJob, Server, generated_tokens
from schedulers.workload import RequestArrays

# The simulator's knobs are the lifecycle's (``sim.*`` in the config): timeout, migration stop rule, retry batch.
SimConfig = LifecycleConfig


@dataclass
class SimResult:
    """What a simulation produces: one row per request, the event log (if recorded), and run totals."""

    requests: pd.DataFrame
    events: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


class SimBackend:
    """The simulated effects: tier links shared fairly by concurrent reads (one per server and tier, or the remote
    store's shared cap), the pool runtime's ready workers per server, the profile's prefill and decode times, and
    migration rounds from the tokens a request has produced by each round's end. A fresh cold start's start-up is
    the model's ``startup_s``, or a seeded draw from its measured ``startup_samples_s`` where the cluster has them."""

    def __init__(self, clock: SimClock, cluster: Cluster, seed: int = 0) -> None:
        self.clock, self.cluster = clock, cluster
        self.rng = np.random.default_rng(seed)
        self.store_link = FairShareLink(clock, cluster.store_gbps * 1e9) if cluster.store_gbps else None
        self.links: dict[tuple[int, str], FairShareLink] = {}
        rt = cluster.runtime
        self.pools = ([WorkerPoolClock(rt.pool_size, rt.worker_start_s, refill_after_load=rt.refill == "after_load")
                       for _ in range(cluster.servers)] if rt.kind == "pool" else None)
        self.life: Lifecycle

    def _link(self, server: Server, tier: str) -> FairShareLink:
        if tier == "remote" and self.store_link is not None:
            return self.store_link
        link = self.links.get((server.id, tier))
        if link is None:
            link = self.links[server.id, tier] = FairShareLink(self.clock, server.gbps[tier] * 1e9)
        return link

    def start_load(self, job: LoadJob) -> None:
        """The runtime's start-up (a pool worker first, waiting if none is ready), then the bytes."""
        start = job.start_s
        info, server = job.instance.info, job.instance.server
        wait = self.pools[server.id].acquire(start) - start if self.pools is not None else 0.0
        samples = self.cluster.startup_samples_s(info.name)
        startup_s = float(samples[self.rng.integers(len(samples))]) if samples else info.startup_s
        self.life.loads.runtime_ready(job, wait, wait + startup_s)
        startup = job.startup_s
        if startup > 0:
            self.clock.at(start + startup, self._transfer, job)
        else:
            self._transfer(job)

    def _transfer(self, job: LoadJob) -> None:
        """Read the checkpoint's bytes from the job's tier (a download first for download-then-load policies)."""
        server, n = job.instance.server, job.instance.info.size_bytes
        loader_gbps = job.loader_gbps
        if job.download_then_load and loader_gbps:
            # KServe / Ray Serve: the whole checkpoint lands on local disk first, then torch.load reads it.
            def second() -> None:
                self.clock.at(self.clock.now() + n / (loader_gbps * 1e9), self._loaded, job)

            self._link(server, "remote").start(n, server.gbps["remote"] * 1e9, second)
        else:
            cap = min(server.gbps[job.tier], loader_gbps or math.inf) * 1e9
            self._link(server, job.tier).start(n, cap, lambda: self._loaded(job))

    def _loaded(self, job: LoadJob) -> None:
        inst, server = job.instance, job.instance.server
        if self.pools is not None:  # the cold start is over: its worker's replacement may start
            self.pools[server.id].loaded(self.clock.now())
        dur = self.clock.now() - job.start_s
        floor_s = inst.info.size_bytes / (server.gbps[job.tier] * 1e9) + job.startup_s
        if dur < floor_s * (1 - 1e-9):
            raise SimulatorInvariantError(f"load of {inst.info.name} from {job.tier} took {dur} s < bytes/bandwidth "
                                          f"{floor_s} s")
        self.life.load_done(job, inst.info.build_s)

    def serve(self, inst: Instance, i: int) -> None:
        self.clock.at(inst.done_s, self.life.complete, inst, inst.version)

    def migrate(self, src: Instance, dest: Instance) -> None:
        """ServerlessLLM §5.3: round k re-prefills the tokens the previous round left (the first round: prompt and
        all produced so far) while the source decodes on; stop after a round that produced fewer than the stop
        tokens (or ``migration_max_rounds``), unless the source finishes first (then its completion aborts)."""
        info, d = src.info, src.info.decode_s_per_token
        cfg = self.life.cfg
        gen = lambda t: generated_tokens(t, src.first_token_s, d, src.done_s)  # noqa: E731
        t = self.clock.now()
        tokens = src.prompt_tokens + gen(t)
        for k in range(cfg.migration_max_rounds):
            t_next = t + info.prefill_s(tokens)
            new = gen(t_next) - gen(t)
            self.life.log("migration_round", instance=src.id, round=k, tokens=tokens, start=t, end=t_next,
                          new_tokens=new)
            if t_next >= src.done_s:
                return  # the source finishes first; its completion aborts the migration
            if new < cfg.migration_stop_tokens:
                break
            tokens, t = new, t_next
        self.clock.at(t_next, self.life.migrations.stop, src, dest, src.version, new)

    def released(self, inst: Instance, killed: bool) -> None:
        """A pool takes back the process of an instance that unloaded (not of a killed one)."""
        if not killed and self.pools is not None and self.pools[inst.server.id].give_back(self.clock.now()):
            self.life.stats["pool_reused"] += 1

    def storage_changed(self, server: Server) -> None:
        """Nothing to apply: the bookkeeping is the simulated storage."""


class Simulator:
    """Replays a workload on a cluster under one scheduler and one keep-alive policy, in simulated time."""

    def __init__(self, cluster: Cluster, models: Mapping[str, ModelInfo], scheduler: Scheduler,
                 keepalive: KeepAlive, config: LifecycleConfig | None = None, seed: int = 0) -> None:
        self.clock = SimClock()
        self.backend = SimBackend(self.clock, cluster, seed)  # seed: draws of measured start-ups (if any)
        self.life = Lifecycle(self.clock, cluster, models, scheduler, keepalive, self.backend, config)
        self.backend.life = self.life

    @property
    def servers(self) -> list[Server]:
        return self.life.servers

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.life.events

    def run(self, reqs: RequestArrays) -> SimResult:
        """Simulate every request of ``reqs`` to completion or timeout; deterministic for a given input."""
        self.life.start(reqs)
        # The run allocates millions of short-lived, acyclic objects; the cyclic collector's scans of the growing
        # heap made 1M requests superlinear, so it is paused for the run (refcounting still frees everything).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.clock.run()
        finally:
            if was_enabled:
                gc.enable()
        self.life.finish()
        stats = self.life.stats
        stats["sim_end_s"] = stats.pop("end_s")
        return SimResult(self.life.rec.frame(), self.life.events, stats)
