"""The real controller: replays a workload in wall-clock time against live instances and asks the same policy
objects as the simulator, with views built from live state.

One thread owns all state (an event loop over a queue and a timer heap); blocking work — starting an instance
process and loading it, serving a request, closing an instance — runs on helper threads that post events back.
Times are wall-clock seconds since the run started; arrivals are the workload's times × ``time_scale``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import queue
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness.executors.workers import WorkerDiedError, WorkerError, start_worker
from runtimes.base import ProcessSource, Runtime
from runtimes.fresh import FreshRuntime
from runtimes.workerpool import PoolError
from schedulers.base import ClusterView, KeepAlive, ModelInfo, Placement, Request, Scheduler, policy_storage
from schedulers.real.records import RealConfig, Req
from schedulers.real.serving import Stream, serve
from schedulers.real.slots import LiveInstance, LiveServer
from schedulers.real.tiers import TierOps

log = logging.getLogger("coldstart.schedulers.real")


class Controller:
    """Runs requests on ``servers`` with ``scheduler`` + ``keepalive``; see ``run``."""

    def __init__(self, servers: list[LiveServer], models: Mapping[str, ModelInfo], scheduler: Scheduler,
                 keepalive: KeepAlive, executor: Any, tiers: TierOps, cfg: RealConfig, runtime: Runtime | None = None,
                 host_kwargs: dict[str, Any] | None = None) -> None:
        self.servers, self.models, self.scheduler, self.keepalive = servers, dict(models), scheduler, keepalive
        # the policy's storage (as in the simulator): what migration and pre-warm loads keep, where demotions go
        self.cache_to: tuple[str, ...] = policy_storage(scheduler)[0]
        self.demote_to = tuple(t for t in keepalive.demote_to if t in self.cache_to)
        self.executor, self.tiers, self.cfg = executor, tiers, cfg
        self._q: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.Queue()
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=4 * sum(s.num_gpus for s in servers) + 4,
                                        thread_name_prefix="real")
        self.instances: dict[int, LiveInstance] = {}
        self.waiting: deque[int] = deque()
        self.reqs: list[Req] = []
        self.load_failures: dict[str, int] = {}
        self.last_idle_start: dict[str, float] = {}
        self.active: dict[str, int] = dict.fromkeys(models, 0)
        self.stats: dict[str, float] = {"gpu_seconds": 0.0, "idle_gpu_gb_s": 0.0, "migrations": 0,
                                        "preemptions": 0, "loads": 0, "events": 0, "load_failures": 0,
                                        "migrations_aborted": 0, "prewarms": 0, "decisions": 0,
                                        "decision_s": 0.0}
        self.cold_starts: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._drain_until: float | None = None
        self._handles: list[Any] = []  # every instance process started, so shutdown can leave none behind
        # where each server's instance processes come from (fresh: started per cold start; pool: pre-started)
        self.runtime: Runtime = runtime if runtime is not None else FreshRuntime()
        self.host_kwargs = dict(host_kwargs or {})
        self.sources: list[ProcessSource] = []

    # ---------------------------------------------------------------- clock and loop
    def now(self) -> float:
        return time.time() - self._t0

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the controller thread (thread-safe)."""
        self._q.put((fn, args))

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._timers, (t, next(self._seq), fn, args))

    def run(self, requests: list[Request]) -> list[Req]:
        """Replay ``requests`` (arrival times already in wall seconds) to completion; always stops every
        instance, also on Ctrl-C (unfinished requests are recorded as failed with the reason)."""
        self.reqs = [Req(r.request_id, r.model, r.arrival_s, r.input_tokens, max(r.output_tokens, 1))
                     for r in requests]
        try:
            self.start_sources()
        except BaseException:
            self.shutdown()
            raise
        self._t0 = time.time()
        for r in self.reqs:
            self.at(r.arrival_s, self._arrive, r.rid)
        try:
            while self._unfinished() or self._draining():
                timeout = max(0.0, self._timers[0][0] - self.now()) if self._timers else 0.5
                try:
                    fn, args = self._q.get(timeout=min(timeout, 0.5))
                    fn(*args)
                except queue.Empty:
                    pass
                while self._timers and self._timers[0][0] <= self.now():
                    _, _, fn, args = heapq.heappop(self._timers)
                    fn(*args)
                self._expire_waiting()
        except KeyboardInterrupt:
            log.warning("interrupted: stopping instances and writing what was measured")
            self._fail_unfinished("interrupted (Ctrl-C)")
            self.stats["interrupted"] = 1
        finally:
            self.shutdown()
        return self.reqs

    def start_sources(self) -> None:
        """One process source per server; pools are filled before the first arrival (they are pre-started), within
        the runtime's ``start_timeout_s``: a pool that cannot fill (e.g. a Ray cluster without the CPUs or GPUs for
        size × servers workers) is an error naming what was ready, not a silent wait."""
        for server in self.servers:
            self.sources.append(self.runtime.source(self._starter(server), f"s{server.sid}"))
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

    def _starter(self, server: LiveServer) -> Callable[[str], Any]:
        """How ``server`` starts an instance process: pinned to its node on Ray, within the slot's budgets."""
        kwargs = {"dtype": self.cfg.dtype, "device": self.cfg.device, **self.host_kwargs}

        def start(name: str) -> Any:
            handle = start_worker(self.executor, "schedulers.real.instance:ModelInstance", kwargs,
                                  name=name, num_cpus=self.cfg.slot_threads, memory_bytes=self.cfg.slot_memory_bytes,
                                  resources=server.placement())
            self._handles.append(handle)
            return handle

        return start

    def _draining(self) -> bool:
        """Idle instances still wait for their keep-alive expiry (the simulator runs those to the end)."""
        if self._drain_until is None:
            self._drain_until = self.now() + self.cfg.drain_s
        return bool(self._timers) and bool(self.instances) and self.now() < self._drain_until

    def _unfinished(self) -> bool:
        return any(r.state not in ("done", "failed", "timed_out") for r in self.reqs)

    def shutdown(self) -> None:
        """Close every instance process (idle, busy or loading) and the helper threads."""
        now = self.now()
        self.stats["end_s"] = now
        for inst in list(self.instances.values()):
            self._account_idle(inst)
            self._account_release(inst, now)
            if inst.handle is not None:
                try:
                    inst.handle.close(timeout_s=5)
                except Exception:  # a dead one is fine
                    inst.handle.kill()
        self.instances.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for source in self.sources:  # a pool's idle workers, and its refill thread
            source.close()
        for handle in self._handles:  # closes still queued when the pool stopped, or started meanwhile
            if handle.alive():
                handle.kill()
        self.stats.update(self.runtime_stats())

    def runtime_stats(self) -> dict[str, Any]:
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

    def _fail_unfinished(self, reason: str) -> None:
        for r in self.reqs:
            if r.state not in ("done", "failed", "timed_out"):
                r.state, r.error = "failed", reason

    # ---------------------------------------------------------------- views
    def view(self) -> ClusterView:
        now = self.now()
        waiting: dict[str, tuple[int, float]] = {}
        for rid in self.waiting:
            r = self.reqs[rid]
            c, oldest = waiting.get(r.model, (0, r.arrival_s))
            waiting[r.model] = (c + 1, min(oldest, r.arrival_s))
        counts: dict[str, int] = dict.fromkeys(self.models, 0)
        for inst in self.instances.values():
            counts[inst.model] += 1
        return ClusterView(now, tuple(s.view() for s in self.servers), self.models, waiting, counts)

    # ---------------------------------------------------------------- requests
    def _arrive(self, rid: int) -> None:
        self.stats["events"] += 1
        r = self.reqs[rid]
        if self.active[r.model] == 0 and r.model in self.last_idle_start:
            self.keepalive.observe_idle(r.model, self.now() - self.last_idle_start.pop(r.model))
        self.active[r.model] += 1
        if self.load_failures.get(r.model, 0) >= self.cfg.max_load_failures:
            self._finish_failed(r, f"model {r.model} failed to load {self.load_failures[r.model]} times; not retried")
            return
        idle = [i for i in self.instances.values() if i.model == r.model and i.state == "idle"]
        if idle:
            inst = max(idle, key=lambda i: i.idle_since_s or 0.0)
            r.tier, r.server, r.placed_s, r.load_s = "gpu", inst.server, self.now(), 0.0
            self._account_idle(inst)
            self._start_serving(inst, r)
            return
        self._decide(r)

    def _decide(self, r: Req) -> bool:
        t0 = time.perf_counter()
        view = self.view()
        decision = self.scheduler.schedule(Request(r.rid, r.model, r.arrival_s, r.input_tokens, r.output_tokens),
                                           view)
        self.stats["decisions"] += 1
        self.stats["decision_s"] += time.perf_counter() - t0
        if not isinstance(decision, Placement):
            if r.state != "waiting":
                r.state = "waiting"
                self.waiting.append(r.rid)
            if decision.retry_at_s is not None:
                self.at(decision.retry_at_s, self._retry)
            return False
        if r.rid in self.waiting:
            self.waiting.remove(r.rid)
        self._place(r, decision)
        return True

    def _place(self, r: Req, d: Placement) -> None:
        server = self.servers[d.server]
        info = self.models[r.model]
        r.state, r.server, r.tier, r.placed_s, r.cold_start = "assigned", d.server, d.tier, self.now(), True
        for iid in d.preemptions:  # their requests restart
            victim = self.instances.get(iid)
            if victim is not None and victim.request is not None:
                self.stats["preemptions"] += 1
                victim.preempted = True
                self._restart(self.reqs[victim.request])
                self._kill_instance(victim, "preempted")
        for m in d.migrations:
            self._start_migration(m.instance_id, m.dst_server)
        self._evict_idle_for(server, info.gpus)
        inst = LiveInstance(next(self._ids), r.model, d.server, info.gpus, for_request=r.rid, tier=d.tier,
                            cache_to=tuple(d.cache_to))
        self.instances[inst.iid] = inst
        server.instances[inst.iid] = inst
        est = info.size_bytes / (server.gbps[d.tier if d.tier in server.gbps else "ssd"] * 1e9) + info.build_s
        server.queue_free_at_s = max(server.queue_free_at_s, self.now()) + est
        self._grab_gpus(inst)

    def _grab_gpus(self, inst: LiveInstance) -> None:
        """Start loading once the instance's slots are free (a migration or eviction may still hold them)."""
        server = self.servers[inst.server]
        if inst.state != "pending":
            return
        if server.free_gpus < inst.gpus:
            self._evict_idle_for(server, inst.gpus)
        if server.free_gpus < inst.gpus:
            return  # retried when a release frees slots
        server.free_gpus -= inst.gpus
        inst.acquired_s, inst.state = self.now(), "loading"
        self.stats["loads"] += 1
        self._pool.submit(self._load_job, inst)

    def _loaded(self, inst: LiveInstance, start: float, phases: dict[str, Any]) -> None:
        server = self.servers[inst.server]
        inst.phases = phases
        self.cold_starts.append({"instance": inst.iid, "model": inst.model, "server": inst.server,
                                 "tier": inst.tier, "load_start_s": start, **{k: v for k, v in phases.items()
                                                                              if k != "bytes_by_tier"}})
        self.tiers.after_load(server, inst.model, inst.cache_to)
        if inst.state == "gone":  # killed while loading
            return
        if inst.migrating and inst.request is None and inst.for_request is None:
            inst.state = "idle-migration"
            return
        r = self.reqs[inst.for_request] if inst.for_request is not None else None
        if r is not None and r.state == "assigned":
            r.load_s = self.now() - r.load_start_s
            self._start_serving(inst, r)  # nothing was freed: waiting requests are not asked again (as in the
        else:  # simulator, where only freed slots retry them; asking now let a waiter preempt this new one)
            self._next_or_idle(inst)
            self._retry()

    def _load_failed(self, inst: LiveInstance, reason: str) -> None:
        self.stats["load_failures"] += 1
        self.load_failures[inst.model] = self.load_failures.get(inst.model, 0) + 1
        log.error("instance %d (%s) failed to load: %s", inst.iid, inst.model, reason)
        self._kill_instance(inst, reason)
        r = self.reqs[inst.for_request] if inst.for_request is not None else None
        if r is not None and r.state == "assigned":
            self._requeue_or_fail(r, f"load failed: {reason}")
        self._retry()

    def _start_serving(self, inst: LiveInstance, r: Req) -> None:
        info = self.models[r.model]
        now = self.now()
        inst.state, inst.request, inst.prompt_tokens = "busy", r.rid, r.input_tokens
        inst.first_token_s = now + info.prefill_s(r.input_tokens)
        inst.decode_s_per_token = info.decode_s_per_token
        inst.done_s = inst.first_token_s + r.output_tokens * info.decode_s_per_token
        r.state, r.server = "running", inst.server
        self.servers[inst.server].instances[inst.iid] = inst
        self._pool.submit(self._serve_job, inst, r)

    def _served(self, inst: LiveInstance, r: Req, stream: Stream) -> None:
        if inst.preempted:  # it finished before the kill landed: keep the result if it is still only waiting
            if r.state != "waiting":
                return  # restarted elsewhere already; that run's result counts
            self.waiting.remove(r.rid)
        r.first_token_s = stream.times_s[0] - self._t0
        r.prefill_s = r.first_token_s - r.serve_start_s
        r.done_s = stream.times_s[-1] - self._t0
        r.migrated, r.max_gap_s, r.state = stream.migrated, stream.max_gap_s(), "done"
        r.tokens = list(stream.tokens)
        self.active[r.model] -= 1
        if not inst.preempted:  # a preempted instance is gone already
            dst = inst.migrate_to
            if dst is not None:  # finished before the destination was ready: it becomes an ordinary instance
                inst.migrate_to, inst.migrating, dst.migrating = None, False, False
                self.stats["migrations_aborted"] += 1
                if dst.state == "idle-migration":
                    self._next_or_idle(dst)
            self._next_or_idle(inst)
        self._retry()

    def _restart(self, r: Req) -> None:
        """A preempted request restarts from scratch, first in line, at once (as in the simulator: retried when
        resources change), not when its serving thread notices: that can be after the newcomer started."""
        r.preempted += 1
        r.state, r.load_start_s = "waiting", math.nan
        self.waiting.appendleft(r.rid)

    def _serve_failed(self, inst: LiveInstance, r: Req, reason: str) -> None:
        self._kill_instance(inst, reason)
        if inst.preempted:  # the policy's choice, already handled in _place
            return
        log.error("request %d on instance %d failed: %s", r.rid, inst.iid, reason)
        self._requeue_or_fail(r, reason)
        self._retry()

    def _requeue_or_fail(self, r: Req, reason: str) -> None:
        failures = self.load_failures.get(r.model, 0)
        if failures >= self.cfg.max_load_failures:
            self._finish_failed(r, f"{reason} (model {r.model} failed to load {failures} times; not retried)")
        elif r.retries < self.cfg.max_request_retries and self.now() - r.arrival_s < self.cfg.timeout_s:
            r.retries += 1
            r.state, r.error = "new", reason
            r.load_start_s = math.nan
            self._decide(r)
        else:
            self._finish_failed(r, reason)

    def _finish_failed(self, r: Req, reason: str) -> None:
        r.state, r.error = "failed", reason
        self.active[r.model] = max(self.active[r.model] - 1, 0)

    def _retry(self) -> None:
        """Resources changed: ask again for waiting requests (oldest first) and pending instances."""
        for inst in [i for i in self.instances.values() if i.state == "pending"]:
            self._grab_gpus(inst)
        for rid in list(self.waiting):
            r = self.reqs[rid]
            idle = [i for i in self.instances.values() if i.model == r.model and i.state == "idle"]
            if idle:
                self.waiting.remove(rid)
                r.tier, r.server, r.placed_s, r.load_s = "gpu", idle[0].server, self.now(), 0.0
                self._account_idle(idle[0])
                self._start_serving(idle[0], r)
            elif not self._decide(r):
                break

    def _expire_waiting(self) -> None:
        now = self.now()
        for rid in list(self.waiting):
            r = self.reqs[rid]
            if now - r.arrival_s >= self.cfg.timeout_s:
                self.waiting.remove(rid)
                r.state = "timed_out"
                self.active[r.model] = max(self.active[r.model] - 1, 0)

    # ------------------------------------------------ instances once they exist: idle, eviction, release, migration

    def _next_or_idle(self, inst: LiveInstance) -> None:
        for rid in list(self.waiting):
            r = self.reqs[rid]
            if r.model == inst.model:
                self.waiting.remove(rid)
                r.tier, r.server, r.placed_s, r.load_s = "gpu", inst.server, self.now(), 0.0
                self._start_serving(inst, r)
                return
        inst.state, inst.request, inst.idle_since_s = "idle", None, self.now()
        inst.version += 1
        if self.active[inst.model] == 0:
            self.last_idle_start[inst.model] = self.now()
        keep, inst.prewarm_keep_s = inst.prewarm_keep_s, None
        if keep is None:  # a pre-warmed instance's first window was decided when it was unloaded
            kd = self.keepalive.decide(inst.model)
            if kd.prewarm_s > 0:  # unload now, load again just before the next request is expected
                self._evict(inst)
                self.at(self.now() + kd.prewarm_s, self._prewarm, inst.model, inst.server,
                        max(kd.keep_alive_s - kd.prewarm_s, 0.0))
                self._retry()
                return
            keep = kd.keep_alive_s
        if math.isfinite(keep):
            self.at(self.now() + keep, self._expire, inst, inst.version)

    def _prewarm(self, model: str, sid: int, keep_s: float) -> None:
        """Load ``model`` on server ``sid`` ahead of its next request (hybrid histogram's pre-warm window), unless
        an instance of it is already idle or the server has no free slot (as the simulator does)."""
        self.stats["events"] += 1
        server, info = self.servers[sid], self.models[model]
        if any(i.model == model and i.state == "idle" for i in self.instances.values()) or \
                server.free_gpus < info.gpus:
            return
        self.stats["prewarms"] += 1
        inst = LiveInstance(next(self._ids), model, sid, info.gpus, tier=server.view().best_tier(model),
                            cache_to=self.cache_to, prewarm_keep_s=keep_s)
        self.instances[inst.iid] = inst
        server.instances[inst.iid] = inst
        self._grab_gpus(inst)

    def _expire(self, inst: LiveInstance, version: int) -> None:
        if inst.state == "idle" and inst.version == version:
            self._evict(inst)
            self._retry()

    def _evict(self, inst: LiveInstance) -> None:
        """Take an idle instance off its slot; demote its checkpoint as the keep-alive policy says."""
        self._account_idle(inst)
        self.tiers.demote(self.servers[inst.server], inst.model, self.demote_to)
        self._kill_instance(inst, None)

    def _evict_idle_for(self, server: LiveServer, gpus: int) -> None:
        for inst in sorted((i for i in server.instances.values() if i.state == "idle"),
                           key=lambda i: i.idle_since_s or 0.0):
            if server.free_gpus >= gpus:
                return
            self._evict(inst)

    def _account_idle(self, inst: LiveInstance) -> None:
        if inst.state == "idle" and inst.idle_since_s is not None:
            gb = (self.cfg.slot_memory_bytes or 0) / 1e9
            self.stats["idle_gpu_gb_s"] += inst.gpus * gb * (self.now() - inst.idle_since_s)
            inst.idle_since_s = None

    def _account_release(self, inst: LiveInstance, now: float) -> None:
        if inst.acquired_s is not None:
            self.stats["gpu_seconds"] += inst.gpus * (now - inst.acquired_s)
            inst.acquired_s = None

    def _release(self, inst: LiveInstance) -> None:
        if inst.state == "gone":
            return
        server = self.servers[inst.server]
        if inst.state != "pending":
            server.free_gpus += inst.gpus
        self._account_release(inst, self.now())
        inst.state = "gone"
        server.instances.pop(inst.iid, None)
        self.instances.pop(inst.iid, None)

    def _kill_instance(self, inst: LiveInstance, reason: str | None) -> None:
        """Take the instance off its slot; its process is discarded after a failure, else given back to its source
        (a pool reuses it only if its memory came back after unload)."""
        handle = inst.handle
        self._release(inst)
        if handle is not None:
            source = self.sources[inst.server] if self.sources else None
            if source is None:
                self._pool.submit(handle.kill if reason else handle.close)
            elif reason:
                self._pool.submit(source.discard, handle)
            else:
                self._pool.submit(self._give_back, source, handle)

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

    # ---------------------------------------------------------------- live migration
    def _start_migration(self, iid: int, dst_server: int) -> None:
        src = self.instances.get(iid)
        if src is None or src.state != "busy" or src.migrate_to is not None:
            return
        self.stats["migrations"] += 1
        dst = LiveInstance(next(self._ids), src.model, dst_server, src.gpus, tier=
                           self.servers[dst_server].view().best_tier(src.model), cache_to=self.cache_to)
        dst.migrating = src.migrating = True
        self.instances[dst.iid] = dst
        self.servers[dst_server].instances[dst.iid] = dst
        src.migrate_to = dst
        self._grab_gpus(dst)

    def _migration_started(self, src: LiveInstance, dst: LiveInstance) -> None:
        """The rounds are over and ``dst`` decodes: free ``src``; its slot goes to whoever was placed behind it."""
        dst.state, dst.request, dst.migrating = "busy", src.request, False
        dst.prompt_tokens, dst.first_token_s, dst.done_s = src.prompt_tokens, src.first_token_s, src.done_s
        dst.decode_s_per_token = src.decode_s_per_token
        src.migrating = False
        self._kill_instance(src, None)
        self._retry()

    # ------------------------------------------------ helper threads: blocking work that posts its outcome back

    def _load_job(self, inst: LiveInstance) -> None:
        """Helper thread: wait for the server's loading queue, spawn the instance process, load, build."""
        server = self.servers[inst.server]
        with server.load_lock:
            start = self.now()
            r = self.reqs[inst.for_request] if inst.for_request is not None else None
            if r is not None and math.isnan(r.load_start_s):
                r.load_start_s = start
            try:
                path, download_s = self.tiers.prepare(server, inst.model, inst.tier)
                phases = self._load_on_runtime(inst, str(path))
                phases["download_s"] = download_s
                phases["load_s"] = self.now() - start
            except Exception as exc:
                self.post(self._load_failed, inst, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                return
        self.post(self._loaded, inst, start, phases)

    def _load_on_runtime(self, inst: LiveInstance, path: str) -> dict[str, Any]:
        """Helper thread: get a ready process from the server's source and load into it. A process that dies
        mid-load (killed, over its memory budget) is replaced and the load retried once; one whose load failed
        is discarded, never reused."""
        source = self.sources[inst.server]
        for attempt in range(2):
            t0 = time.time()
            handle, _ = source.acquire(self.cfg.call_timeout_s)
            handoff = time.time() - t0
            inst.handle = handle
            try:
                phases: dict[str, Any] = handle.call("load", path, self.tiers.loader_cfg(self.servers[inst.server]),
                                                     self.tiers.model_cfg(inst.model),
                                                     timeout_s=self.cfg.call_timeout_s)
            except WorkerDiedError:
                source.discard(handle)
                inst.handle = None
                if attempt == 0 and inst.state != "gone":
                    self.stats["load_retries"] = self.stats.get("load_retries", 0) + 1
                    continue
                raise
            except Exception:
                source.discard(handle)
                inst.handle = None
                raise
            source.loaded(handle)
            phases.update({"runtime": self.runtime.name, "handoff_s": handoff, "retried": attempt})
            return phases
        raise AssertionError("unreachable")

    def _serve_job(self, inst: LiveInstance, r: Req) -> None:
        from schedulers.real.instance import prompt_tokens

        stream = Stream(prompt_tokens(r.rid, r.input_tokens, self.tiers.vocab_size(r.model)))
        r.serve_start_s = self.now()
        holder = {"inst": inst}

        def target() -> Any:
            dst = holder["inst"].migrate_to
            if dst is None or dst.handle is None or dst.state != "idle-migration":
                return None
            holder["src"] = holder["inst"]
            holder["inst"] = dst
            return dst.handle

        def migrated() -> None:
            self.post(self._migration_started, holder["src"], holder["inst"])

        try:
            serve(lambda: inst.handle, r.rid, stream, r.output_tokens, self.cfg.decode_chunk, self.cfg.call_timeout_s,
                  target, self.cfg.migration_stop_tokens, migrated)
            holder["inst"].handle.call("finish", r.rid, timeout_s=self.cfg.call_timeout_s)
        except (WorkerError, TimeoutError) as exc:
            self.post(self._serve_failed, holder["inst"], r, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            return
        self.post(self._served, holder["inst"], r, stream)
