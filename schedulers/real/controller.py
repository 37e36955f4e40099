"""The real controller: the shared lifecycle (``schedulers/lifecycle.py``) on a wall clock, with a backend whose
effects are real — instance processes from the run's runtime that load checkpoints and serve requests token by
token, live migration in rounds, files copied and staged into each server's tiers.

The lifecycle owns all state and runs on the clock's thread. The backend's slow work runs elsewhere and comes back
by ``post``: RPCs to instance processes are futures (``serving.Calls``), storage operations run on each server's
storage thread (``tiers.Site.work``), getting a process and giving one back run on helper threads (``work``).
Times are seconds since the run started; arrivals are the workload's times × ``time_scale``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from harness.executors.workers import WorkerDiedError, WorkerError
from runtimes.base import ProcessSource
from schedulers.base import KeepAlive, ModelInfo, Request, Scheduler
from schedulers.clock import SimClock, WallClock
from schedulers.cluster import Cluster
from schedulers.lifecycle import Lifecycle
from schedulers.real.config import RealConfig
from schedulers.real.instance import prompt_tokens
from schedulers.real.processes import ProcessSources
from schedulers.real.serving import Calls, Serving, reason_of
from schedulers.real.tiers import TierOps
from schedulers.records import FINISHED, STATE_NAMES
from schedulers.state import Instance, LoadJob, Server
from schedulers.workload import RequestArrays

log = logging.getLogger("coldstart.schedulers.real")


def _log_failure(fut: Future[Any], what: str) -> None:
    error = fut.exception()
    if error is not None:
        log.error("%s: %s", what, reason_of(error))


class RequestEvents:
    """What one request in progress reports back, addressed to the instance serving it now."""

    def __init__(self, backend: RealBackend, inst: Instance, i: int) -> None:
        self.backend, self.inst, self.version, self.i = backend, inst, inst.version, i
        self.dest: Instance | None = None
        self.src_version = 0

    def first_token(self, t: float) -> None:
        self.backend.life.first_token(self.i, t)

    def done(self, t: float) -> None:
        self.backend.finished(self.i)
        self.backend.life.complete(self.inst, self.version, t)

    def failed(self, reason: str) -> None:
        log.error("request %d on instance %d failed: %s", self.i, self.inst.id, reason)
        self.backend.finished(self.i)
        self.backend.life.failures.serve_failed(self.inst, self.version, reason, self.backend.cfg.max_request_retries)

    def stop_source(self, new_tokens: int) -> None:
        if self.dest is not None:
            self.backend.life.migrations.stop(self.inst, self.dest, self.src_version, new_tokens)

    def destination_failed(self, reason: str) -> None:
        dest, self.dest = self.dest, None
        if dest is not None:
            log.error("migration destination %d failed: %s", dest.id, reason)
            self.backend.life.failures.serve_failed(dest, dest.version, reason, self.backend.cfg.max_request_retries)


class RealBackend:
    """The real effects of the lifecycle: loads (storage, a process from the server's source, the ``load`` call),
    serving and migration rounds (``Serving``), storage applied by each server's storage thread, processes given
    back (unloaded, for a pool to reuse) or killed."""

    def __init__(self, clock: Any, tiers: TierOps, processes: ProcessSources, work: Any) -> None:
        self.clock, self.tiers, self.sites, self.work = clock, tiers, tiers.sites, work
        self.cfg, self.runtime, self.sources = processes.cfg, processes.runtime, processes.sources
        self.calls = Calls(clock, self.cfg.call_timeout_s)
        self.handles: dict[int, Any] = {}  # instance id → its process
        self.serving: dict[int, tuple[Serving, RequestEvents]] = {}  # request id → in progress
        self.measured: dict[int, dict[str, Any]] = {}  # request id → prefill_s, decode_s, max_gap_s, tokens
        self.reading: list[Counter[str]] = [Counter() for _ in self.sites]  # checkpoints each server's loads read
        self.cold_starts: list[dict[str, Any]] = []
        self.life: Lifecycle

    def _back(self, fut: Future[Any], fn: Callable[..., None], *args: Any) -> None:
        """``fn(*args, fut)`` on the clock's thread once ``fut`` is done."""
        fut.add_done_callback(lambda f: self.clock.post(fn, *args, f))

    # ------------------------------------------------------------------ loads
    def start_load(self, job: LoadJob) -> None:
        inst, site = job.instance, self.sites[job.instance.server.id]
        self.reading[site.sid][inst.info.name] += 1
        self._back(site.work.submit(self.tiers.prepare, site, inst.info.name, job.tier, inst.id), self._prepared, job)

    def _prepared(self, job: LoadJob, fut: Future[Any]) -> None:
        if fut.exception() is not None:
            self._load_failed(job, reason_of(fut.exception()))  # type: ignore[arg-type]
            return
        path, download_s = fut.result()
        self._acquire(job, str(path), download_s, 0)

    def _acquire(self, job: LoadJob, path: str, download_s: float, attempt: int) -> None:
        source = self.sources[job.instance.server.id]
        self._back(self.work.submit(source.acquire, self.cfg.call_timeout_s), self._acquired, job, path, download_s,
                   attempt)

    def _acquired(self, job: LoadJob, path: str, download_s: float, attempt: int, fut: Future[Any]) -> None:
        if fut.exception() is not None:
            self._load_failed(job, reason_of(fut.exception()))  # type: ignore[arg-type]
            return
        handle, handoff_s = fut.result()
        inst, site = job.instance, self.sites[job.instance.server.id]
        self.handles[inst.id] = handle
        loader, model = self.tiers.loader_cfg(site, job.tier), self.tiers.model_cfg(inst.info.name)
        self.calls.call(handle, "load", path, loader, model,
                        dict(self.cfg.engine) if self.cfg.engine is not None else None, self.cfg.engine_prompt_tokens,
                        then=lambda _s, out, err: self._loaded(job, path, download_s, attempt, handoff_s, out, err))

    def _loaded(self, job: LoadJob, path: str, download_s: float, attempt: int, handoff_s: float, phases: Any,
                error: BaseException | None) -> None:
        """A process that died mid-load (killed, over its memory budget) is replaced and the load retried once; one
        whose load failed is discarded, never reused."""
        inst = job.instance
        source = self.sources[inst.server.id]
        handle = self.handles.get(inst.id)
        if error is not None:
            self.handles.pop(inst.id, None)
            if handle is not None:
                self.work.submit(source.discard, handle)
            if isinstance(error, WorkerDiedError) and attempt == 0 and inst.state != "gone":
                self.life.stats["load_retries"] = self.life.stats.get("load_retries", 0) + 1
                self._acquire(job, path, download_s, 1)
            else:
                self._load_failed(job, reason_of(error))
            return
        self.work.submit(source.loaded, handle)
        now = self.clock.now()
        row = {k: v for k, v in phases.items() if k != "bytes_by_tier"}
        row.update(runtime=self.runtime.name, handoff_s=handoff_s, retried=attempt, download_s=download_s,
                   load_s=now - job.start_s)
        self.cold_starts.append({"instance": inst.id, "model": inst.info.name, "server": inst.server.id,
                                 "tier": job.tier, "load_start_s": job.start_s, **row})
        self.reading[inst.server.id][inst.info.name] -= 1
        self.life.loads.runtime_ready(job, 0.0, handoff_s + float(phases.get("imports_s", 0.0)))
        self.life.load_done(job, 0.0)  # the build was part of the load call (a named backend difference)
        if job.tier == "remote":
            self.storage_changed(inst.server)  # the download goes, unless a tier keeps the checkpoint

    def _load_failed(self, job: LoadJob, reason: str) -> None:
        log.error("instance %d (%s) failed to load: %s", job.instance.id, job.instance.info.name, reason)
        self.reading[job.instance.server.id][job.instance.info.name] -= 1
        self.life.failures.load_failed(job, reason, self.cfg.max_load_failures, self.cfg.max_request_retries)

    # ------------------------------------------------------------------ requests
    def serve(self, inst: Instance, i: int) -> None:
        going = self.serving.get(i)
        handle = self.handles[inst.id]
        if going is not None:  # a live migration's switch: the destination goes on with the request
            serving, events = going
            events.inst, events.version, events.dest = inst, inst.version, None
            serving.switch(handle)
            return
        rec = self.life.rec
        prompt = prompt_tokens(i, rec.inp[i], self.tiers.vocab_size(rec.model_of[i]))
        events = RequestEvents(self, inst, i)
        serving = Serving(self.calls, handle, i, prompt, rec.out[i], self.cfg.decode_chunk, events)
        self.serving[i] = (serving, events)
        serving.start()

    def finished(self, i: int) -> None:
        serving, _ = self.serving.pop(i)
        first = serving.times_s[0] if serving.times_s else math.nan
        last = serving.times_s[-1] if serving.times_s else math.nan
        self.measured[i] = {"prefill_s": first - serving.start_s, "decode_s": last - first,
                            "max_gap_s": serving.max_gap_s(), "tokens": list(serving.tokens)}

    def migrate(self, src: Instance, dest: Instance) -> None:
        serving, events = self.serving[src.request]
        events.dest, events.src_version = dest, src.version
        cfg = self.life.cfg
        serving.migrate(self.handles[dest.id], cfg.migration_stop_tokens, cfg.migration_max_rounds)

    # ------------------------------------------------------------------ processes and storage
    def released(self, inst: Instance, killed: bool) -> None:
        """A killed instance's request in progress stops (its restart is the lifecycle's); its process is discarded.
        Otherwise the process is unloaded and given back to its source (a pool reuses it if its memory came back)."""
        if killed:
            for i, (serving, events) in list(self.serving.items()):
                if events.inst is inst:
                    serving.cancel()
                    del self.serving[i]
        handle = self.handles.pop(inst.id, None)
        if handle is None:
            return
        source = self.sources[inst.server.id]
        self.work.submit(source.discard if killed else self._give_back, *((handle,) if killed else (source, handle)))

    def _give_back(self, source: ProcessSource, handle: Any) -> None:
        """Helper thread: unload, then return the process to its source (reusable or not)."""
        if not source.reuses:  # a fresh process serves one cold start: no unload to ask for
            source.release(handle, False)
            return
        try:
            info = handle.call("unload", timeout_s=self.cfg.call_timeout_s)
        except (WorkerError, TimeoutError):
            source.discard(handle)
            return
        source.release(handle, self.runtime.reusable(info))

    def storage_changed(self, server: Server) -> None:
        site = self.sites[server.id]
        reading = frozenset(m for m, n in self.reading[server.id].items() if n > 0)
        fut = site.work.submit(self.tiers.reconcile, site, server.ssd.names(), server.dram.names(), reading)
        fut.add_done_callback(lambda f: _log_failure(f, f"server {server.id} storage"))


class Controller:
    """Runs requests on a live cluster with ``scheduler`` + ``keepalive``; see ``run``. ``tiers`` are the servers'
    physical tiers (``tiers.sites``), ``processes`` where their instance processes come from. ``clock`` and ``work``
    default to wall time and helper threads; a ``SimClock`` with work done inline replays the same code in simulated
    time (tests with scripted instance processes)."""

    def __init__(self, cluster: Cluster, models: Mapping[str, ModelInfo], scheduler: Scheduler, keepalive: KeepAlive,
                 tiers: TierOps, processes: ProcessSources, cfg: RealConfig,
                 clock: WallClock | SimClock | None = None, work: Any = None) -> None:
        self.cluster, self.tiers, self.sites, self.processes, self.cfg = cluster, tiers, tiers.sites, processes, cfg
        self.clock = clock if clock is not None else WallClock()
        slots = cluster.servers * cluster.gpus_per_server
        self.work = work if work is not None else ThreadPoolExecutor(4 * slots + 4, thread_name_prefix="real")
        self.backend = RealBackend(self.clock, tiers, processes, self.work)
        self.life = Lifecycle(self.clock, cluster, models, scheduler, keepalive, self.backend, cfg.lifecycle)
        self.backend.life = self.life
        self._drain_until: float | None = None
        self.run_stats: dict[str, Any] = {}  # the runtime's (after shutdown), and whether Ctrl-C stopped the run

    @property
    def stats(self) -> dict[str, Any]:
        """The lifecycle's totals and the run's own."""
        return {**self.life.stats, **self.run_stats}

    @property
    def cold_starts(self) -> list[dict[str, Any]]:
        return self.backend.cold_starts

    def run(self, requests: list[Request], progress: bool = False) -> pd.DataFrame:
        """Replay ``requests`` (arrival times already in wall seconds) to completion; always stops every instance,
        also on Ctrl-C (unfinished requests are recorded as failed with the reason). Returns the requests table.
        ``progress``: a bar of finished requests and the replay's time on a wall clock."""
        models = tuple(self.life.models)
        idx = {m: k for k, m in enumerate(models)}
        arrays = RequestArrays(np.array([r.arrival_s for r in requests], dtype=float),
                               np.array([idx[r.model] for r in requests], dtype=np.int64), models,
                               np.array([r.input_tokens for r in requests], dtype=np.int64),
                               np.array([r.output_tokens for r in requests], dtype=np.int64))
        try:
            self.processes.start(self.sites)
            self.life.start(arrays)
            for site, server in zip(self.sites, self.life.servers, strict=True):  # the initial SSD copies
                self.tiers.reconcile(site, server.ssd.names(), server.dram.names(), frozenset())
        except BaseException:
            self.shutdown()
            raise
        if isinstance(self.clock, WallClock):
            self.clock.start()
        shown = progress and isinstance(self.clock, WallClock)
        bar = tqdm(total=len(requests), unit="req", desc="replay", disable=not shown, mininterval=1.0)
        try:
            self.clock.run(self._over if not shown else self._showing(bar, max((r.arrival_s for r in requests),
                                                                                default=0.0)))
        except KeyboardInterrupt:
            log.warning("interrupted: stopping instances and writing what was measured")
            for i in self.life.rec.unfinished():
                self.life.fail(i, "interrupted (Ctrl-C)")
            self.run_stats["interrupted"] = 1
        finally:
            self.life.finish(strict=False)
            for i in self.life.rec.unfinished():  # still running when the run stopped (a hung process)
                self.life.fail(i, "unfinished when the run stopped")
            bar.update(sum(s in FINISHED for s in self.life.rec.state) - bar.n)
            bar.close()
            self.shutdown()
        return self.requests()

    def _showing(self, bar: tqdm, last_arrival_s: float) -> Callable[[], bool]:
        """``_over``, updating ``bar`` (finished requests, replay time against the last arrival) once a second."""
        shown_at = [0.0]

        def until() -> bool:
            if time.monotonic() - shown_at[0] >= 1.0:
                shown_at[0] = time.monotonic()
                bar.update(sum(s in FINISHED for s in self.life.rec.state) - bar.n)
                bar.set_postfix_str(f"t={self.clock.now():.0f}/{last_arrival_s:.0f} s", refresh=False)
            return self._over()

        return until

    def _over(self) -> bool:
        """All requests are over and either no instance is left or the drain time (keep-alive windows still
        running out, as in the simulator) has passed; or nothing can happen any more."""
        rec = self.life.rec
        if any(s not in FINISHED for s in rec.state):
            under_way = any(inst.state != "idle" for inst in self.life.instances.values())
            return not under_way and self.clock.pending() == 0
        now = self.clock.now()
        if self._drain_until is None:
            self._drain_until = now + self.cfg.drain_s
        return not self.life.instances or now >= self._drain_until

    def requests(self) -> pd.DataFrame:
        """``requests.parquet``: the lifecycle's columns, plus status, error, retries and what the instances
        measured (prefill, decode, the largest gap between tokens)."""
        rec, m = self.life.rec, self.backend.measured
        nan = {"prefill_s": math.nan, "decode_s": math.nan, "max_gap_s": math.nan}
        extra: dict[str, list[Any]] = {"status": [STATE_NAMES[s] for s in rec.state], "error": rec.error,
                                       "retries": rec.retries}
        for key in nan:
            extra[key] = [m.get(i, nan)[key] for i in range(rec.n)]
        return rec.frame(extra)

    @property
    def tokens(self) -> dict[int, list[int]]:
        """Each finished request's greedy tokens."""
        return {i: m["tokens"] for i, m in self.backend.measured.items()}

    def shutdown(self) -> None:
        """Stop the helper threads (a process start still under way finishes; queued work is dropped), then every
        instance process any source started; the runtime's stats."""
        if hasattr(self.work, "shutdown"):
            self.work.shutdown(wait=True, cancel_futures=True)
        self.processes.close(list(self.backend.handles.values()))
        self.backend.handles.clear()
        self.run_stats.update(self.processes.stats())
