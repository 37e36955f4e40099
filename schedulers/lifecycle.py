"""The serverless lifecycle, written once for both engines (STYLE 17): arrivals, decisions, placements, loads
(``loading.py``), keep-alive, eviction and demotion, pre-warming, preemption and migration bookkeeping
(``migration.py``), records and stats (``records.py``).

It runs on a clock (``schedulers/clock.py``): simulated time in ``Simulator``, wall time in the real
``Controller``. What truly differs is a ``Backend``'s: how a load's bytes move, how a request is served, how a
migration's rounds run, how storage is applied, how an instance's process is released — and the failure paths of
real processes, which report back to ``failures.py``. Every method runs on the clock's thread; a backend's helper
threads only ``post``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from schedulers.base import ClusterView, KeepAlive, ModelInfo, Placement, Scheduler, policy_storage
from schedulers.clock import Clock
from schedulers.cluster import Cluster
from schedulers.errors import SimulatorInvariantError
from schedulers.failures import Failures
from schedulers.loading import LoadQueues
from schedulers.migration import Migrations
from schedulers.records import ASSIGNED, DONE, FAILED, FINISHED, RUNNING, TIMED_OUT, WAITING, RequestRecords
from schedulers.state import Instance, LoadJob, Server
from schedulers.workload import RequestArrays


@dataclass(frozen=True)
class LifecycleConfig:
    """Knobs of the lifecycle, the same in both engines: request timeout, the live-migration stop rule and round
    cap, how many waiting requests one retry asks about, whether to keep an event log."""

    timeout_s: float = 300.0
    migration_stop_tokens: int = 20  # ServerlessLLM §5.3: stop when a round produced fewer new tokens than this
    migration_max_rounds: int = 8  # rounds stop here even if they keep producing tokens (prefill can't keep up)
    retry_batch: int = 8
    record_events: bool = False

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"sim.timeout_s={self.timeout_s!r} is not allowed; it must be > 0")
        if self.migration_stop_tokens < 1:
            raise ValueError(f"sim.migration_stop_tokens={self.migration_stop_tokens!r}; it must be ≥ 1")
        if self.migration_max_rounds < 1:
            raise ValueError(f"sim.migration_max_rounds={self.migration_max_rounds!r}; it must be ≥ 1")


class Backend(Protocol):
    """The effects that differ between the simulator and the real controller (the lifecycle calls these)."""

    def start_load(self, job: LoadJob) -> None:
        """Get a ready process and move the checkpoint's bytes; then ``Lifecycle.load_done`` (or
        ``failures.load_failed``)."""

    def serve(self, inst: Instance, i: int) -> None:
        """Serve request ``i`` on ``inst`` from now (or go on with it after a migration); then
        ``Lifecycle.complete(inst, inst.version)`` (or ``failures.serve_failed``)."""

    def migrate(self, src: Instance, dest: Instance) -> None:
        """``dest`` is loaded: run the re-prefill rounds; then ``migrations.stop`` (unless ``src`` finishes first,
        which aborts the migration)."""

    def released(self, inst: Instance, killed: bool) -> None:
        """``inst`` left its GPUs: give its process back (unloaded) or, ``killed``, end it."""

    def storage_changed(self, server: Server) -> None:
        """``server``'s DRAM/SSD tiers now hold what their ``TierStore`` bookkeeping says: make it so."""


class Lifecycle:
    """One run of a workload on a cluster under one scheduler and one keep-alive policy.

    Warm requests go to the most recently idled instance of their model; the scheduler is asked only for cold
    starts and for requests that wait; a request told to wait is retried (oldest first) whenever GPUs free up or
    at its ``retry_at_s``, and is served by the next instance of its model that finishes.
    """

    def __init__(self, clock: Clock, cluster: Cluster, models: Mapping[str, ModelInfo], scheduler: Scheduler,
                 keepalive: KeepAlive, backend: Backend, config: LifecycleConfig | None = None) -> None:
        self.clock, self.cluster = clock, cluster
        self.models = MappingProxyType(dict(models))
        self.scheduler, self.keepalive, self.backend = scheduler, keepalive, backend
        self.cfg = config or LifecycleConfig()
        # The policy's storage: what its migration and pre-warm loads write and whether they may upgrade (cold
        # starts carry it in their Placement), and where a keep-alive eviction may demote a checkpoint to.
        self.cache_to, self.tier_upgrade = policy_storage(scheduler)
        self.demote_to = tuple(t for t in keepalive.demote_to if t in self.cache_to)
        self._dirty: set[int] = set()
        self.servers = [Server(s, cluster, self._dirty) for s in range(cluster.servers)]
        self._views = tuple(s.view() for s in self.servers)
        self.instances: dict[int, Instance] = {}
        self.idle_by_model: dict[str, dict[int, Instance]] = {m: {} for m in models}
        self.inst_count: dict[str, int] = dict.fromkeys(models, 0)
        self.active: dict[str, int] = dict.fromkeys(models, 0)  # unfinished requests per model (arrived, not over)
        self.last_idle_start: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self.stats: dict[str, float] = dict.fromkeys(
            ("gpu_seconds", "idle_gpu_gb_s", "migrations", "migrations_aborted", "preemptions", "loads", "events",
             "runtime_wait_s", "pool_wait_s", "pool_reused", "prewarms", "decisions", "decision_s",
             "load_failures"), 0.0)
        self.rec = RequestRecords(RequestArrays.empty(tuple(models)))
        self.loads = LoadQueues(clock, self.models, self.rec, self.stats, backend.start_load,
                                backend.storage_changed, self.log)
        self.migrations = Migrations(self)
        self.failures = Failures(self)
        self._next_id = 0
        self._retry_flag = False
        self._retry_times: set[float] = set()
        self.record = self.cfg.record_events

    # ------------------------------------------------------------------ a run
    def start(self, reqs: RequestArrays) -> None:
        """Spread the checkpoints over the SSDs and schedule the first arrival; the clock's loop runs the rest."""
        self.rec = self.loads.rec = RequestRecords(reqs)
        k = 0
        for m in reqs.models:  # ``ssd_replicas`` copies of each checkpoint, round-robin
            for _ in range(min(self.cluster.ssd_replicas, len(self.servers))):
                self.servers[k % len(self.servers)].ssd.insert(m, self.models[m].size_bytes)
                k += 1
        for server in self.servers:
            server.dirty()
        if len(reqs):
            self.clock.at(self.rec.arrival[0], self._on_arrival, 0)

    def finish(self, strict: bool = True) -> None:
        """After the loop: requests still waiting time out; instances still up are charged to now. ``strict``: any
        other unfinished request is a bug (the simulator; a real run that was stopped fails them first)."""
        rec, now = self.rec, self.clock.now()
        for i in range(rec.n):
            if rec.state[i] == WAITING:
                self._timeout(i)
            elif strict and rec.state[i] not in FINISHED:
                raise SimulatorInvariantError(f"request {i} ended in state {rec.state[i]}")
        for inst in list(self.instances.values()):
            self.stats["gpu_seconds"] += inst.gpus * (now - inst.acquired_s)
            if inst.state == "idle":
                self.stats["idle_gpu_gb_s"] += inst.gpus * self.cluster.gpu_mem_gb * (now - inst.idle_since)
        self.stats["end_s"] = now

    def log(self, kind: str, **fields: Any) -> None:
        if self.record:
            self.events.append({"t": self.clock.now(), "kind": kind, **fields})

    def view(self) -> ClusterView:
        """The read-only cluster view handed to the scheduler (server views rebuilt only where something changed)."""
        now = self.clock.now()
        waiting = self.rec.waiting(now)
        if self._dirty:
            views = list(self._views)
            for sid in self._dirty:
                views[sid] = self.servers[sid].view()
            self._dirty.clear()
            self._views = tuple(views)
        return ClusterView(now, self._views, self.models, waiting, self.inst_count)

    # ------------------------------------------------------------------ requests
    def _on_arrival(self, i: int) -> None:
        self.stats["events"] += 1
        rec = self.rec
        if i + 1 < rec.n:
            self.clock.at(rec.arrival[i + 1], self._on_arrival, i + 1)
        m = rec.model_of[i]
        if self.active[m] == 0 and m in self.last_idle_start:
            self.keepalive.observe_idle(m, self.clock.now() - self.last_idle_start.pop(m))
        self.active[m] += 1
        idle = self.idle_by_model[m]
        given_up = self.failures.given_up
        if given_up and m in given_up:
            self.fail(i, given_up[m])
        elif idle:
            inst = idle.pop(next(reversed(idle)))
            self.stats["idle_gpu_gb_s"] += inst.gpus * self.cluster.gpu_mem_gb * (self.clock.now() - inst.idle_since)
            rec.r["tier_decided"][i] = rec.r["tier_loaded"][i] = "gpu"
            self._run(inst, i)
        else:
            self.decide(i)
        self.after()

    def decide(self, i: int) -> bool:
        t0 = time.perf_counter()
        decision = self.scheduler.schedule(self.rec.request(i), self.view())
        self.stats["decision_s"] += time.perf_counter() - t0
        self.stats["decisions"] += 1
        if self.record:
            self.log("decision", request=i, decision=decision)
        if isinstance(decision, Placement):
            self._place(i, decision)
            return True
        if self.rec.state[i] != WAITING:
            self.rec.add_waiting(i)
        t = decision.retry_at_s
        if t is not None and t > self.clock.now() and t not in self._retry_times:
            self._retry_times.add(t)
            self.clock.at(t, self._retry_timer, t)
        return False

    def expired(self, i: int) -> bool:
        return self.clock.now() - self.rec.arrival[i] >= self.cfg.timeout_s

    def _timeout(self, i: int) -> None:
        if self.rec.state[i] in FINISHED:
            raise SimulatorInvariantError(f"request {i} finished twice")
        self.rec.finish_at_timeout(i, TIMED_OUT, self.cfg.timeout_s)
        self.ended(self.rec.model_of[i])
        self.log("timeout", request=i)

    def fail(self, i: int, reason: str) -> None:
        """Request ``i`` gives up (its model cannot load, its retries are spent): it counts at the timeout."""
        self.rec.finish_at_timeout(i, FAILED, self.cfg.timeout_s)
        self.rec.error[i] = reason
        self.ended(self.rec.model_of[i])

    def ended(self, m: str) -> None:
        """A request of ``m`` is over (done, timed out, failed): with none of ``m``'s left unfinished, ``m`` is idle
        from now (the keep-alive policy learns the idle time at the next arrival)."""
        self.active[m] -= 1
        if self.active[m] == 0:
            self.last_idle_start[m] = self.clock.now()

    def _retry_timer(self, t: float) -> None:
        self._retry_times.discard(t)
        self._retry_flag = True
        self.after()

    def after(self) -> None:
        while self._retry_flag:
            self._retry_flag = False
            self._retry()

    def _retry(self) -> None:
        """Resources changed: ask again for the oldest waiting requests (up to ``retry_batch`` that still wait)."""
        rec = self.rec
        q = rec.wait_global
        while q and rec.state[q[0]] != WAITING:
            q.popleft()
        waits = 0
        for i in list(q):
            if waits >= self.cfg.retry_batch:
                break
            if rec.state[i] != WAITING:
                continue
            if self.expired(i):
                self._timeout(i)
                continue
            if not self.decide(i):
                waits += 1

    # ------------------------------------------------------------------ placement
    def new_instance(self, info: ModelInfo, server: Server) -> Instance:
        inst = Instance(self._next_id, info, server, self.clock.now())
        self._next_id += 1
        self.instances[inst.id] = inst
        server.instances[inst.id] = inst
        self.inst_count[info.name] += 1
        return inst

    def gather(self, inst: Instance, server: Server) -> None:
        """Give ``inst`` free GPUs of its server, evicting idle instances (least recently idle first) if needed."""
        take = min(server.free_gpus, inst.gpus - inst.have)
        server.take_gpus(take)
        inst.have += take
        if inst.have < inst.gpus:
            for victim in sorted((x for x in server.instances.values() if x.state == "idle"),
                                 key=lambda x: x.idle_since):
                if inst.have >= inst.gpus:
                    break
                self._evict(victim)
                take = min(server.free_gpus, inst.gpus - inst.have)
                server.take_gpus(take)
                inst.have += take

    def _place(self, i: int, d: Placement) -> None:
        rec, m = self.rec, self.rec.model_of[i]
        server = self.servers[d.server]
        if d.tier != "remote" and m not in (server.dram if d.tier == "dram" else server.ssd):
            raise SimulatorInvariantError(f"placement of {m} on server {d.server} from {d.tier}, which lacks it")
        if rec.state[i] == WAITING:
            rec.unwait(i, ASSIGNED)
        rec.state[i] = ASSIGNED
        inst = self.new_instance(self.models[m], server)
        inst.request, inst.prompt_tokens, inst.decision = i, rec.inp[i], d
        rec.r["placed_s"][i] = self.clock.now()
        rec.r["server"][i], rec.r["cold_start"][i] = d.server, True
        rec.r["tier_decided"][i] = rec.r["tier_loaded"][i] = d.tier
        self.gather(inst, server)
        for pid in d.preemptions:
            self.migrations.preempt(self.instances[pid], inst)
        for mig in d.migrations:
            self.migrations.start(self.instances[mig.instance_id], self.servers[mig.dst_server], inst)
        if inst.state != "pending":
            return  # a preemption already handed over the last GPUs and started the load
        if inst.have >= inst.gpus:
            self.handoff(inst)
        elif not any(x.handoff_to is inst for x in server.instances.values()):
            raise SimulatorInvariantError(f"infeasible placement {d} for request {i}: {inst.have}/{inst.gpus} GPUs")

    def handoff(self, inst: Instance) -> None:
        """``inst`` has all its GPUs (from free ones, migrations or preemptions): queue its load."""
        d = inst.decision
        assert d is not None
        self.loads.enqueue(inst, d.tier, d.loader_gbps, d.download_then_load, d.cache_to, d.tier_upgrade)

    # ------------------------------------------------------------------ loads end, requests run
    def load_done(self, job: LoadJob, build_s: float, **log_fields: Any) -> None:
        """The backend moved the bytes: the slot is free; the instance is ready after ``build_s`` more."""
        self.stats["events"] += 1
        self.loads.done(job, **log_fields)
        if build_s > 0:
            self.clock.at(self.clock.now() + build_s, self._ready, job.instance)
        else:
            self._ready(job.instance)

    def _ready(self, inst: Instance) -> None:
        self.stats["events"] += 1
        if inst.migration_src is not None:
            self.migrations.loaded(inst)
        elif inst.abort or inst.request < 0:
            self.next_or_idle(inst, inst.prewarm_keep_s)
        else:
            i = inst.request
            self.rec.r["load_s"][i] = self.clock.now() - self.rec.r["load_start_s"][i]
            self._run(inst, i)
        self.after()

    def _run(self, inst: Instance, i: int) -> None:
        """Serve request ``i`` on ``inst`` (its first token and end estimated from the model's profile)."""
        rec, info, now = self.rec, inst.info, self.clock.now()
        r = rec.r
        first = now + info.prefill_s(rec.inp[i])
        if first - rec.arrival[i] > self.cfg.timeout_s:
            self._timeout(i)
            inst.request = -1
            self.next_or_idle(inst)
            return
        if r["tier_loaded"][i] == "gpu":
            r["queue_s"][i], r["load_s"][i] = now - rec.arrival[i], 0.0
            r["server"][i], r["cold_start"][i] = inst.server.id, False
        else:
            r["queue_s"][i] = (r["placed_s"][i] - rec.arrival[i]) + (r["load_start_s"][i] - r["enq_s"][i])
            r["migration_s"][i] += r["enq_s"][i] - r["placed_s"][i]
        rec.state[i] = RUNNING
        inst.state, inst.request, inst.prompt_tokens = "busy", i, rec.inp[i]
        inst.first_token_s = first
        inst.done_s = first + (rec.out[i] - 1) * info.decode_s_per_token
        r["ttft_s"][i] = first - rec.arrival[i]
        inst.server.dirty()
        inst.version += 1
        self.backend.serve(inst, i)

    def first_token(self, i: int, t: float) -> None:
        """A real first token came at ``t`` (the lifecycle's was the profile's estimate)."""
        self.rec.r["ttft_s"][i] = t - self.rec.arrival[i]

    def complete(self, inst: Instance, version: int, done_s: float | None = None) -> None:
        """``inst`` finished its request (at ``done_s``, default now); it serves the next waiting one or idles."""
        if version != inst.version:
            return
        self.stats["events"] += 1
        i, m = inst.request, inst.info.name
        if self.rec.state[i] != RUNNING:
            raise SimulatorInvariantError(f"request {i} completed in state {self.rec.state[i]}")
        self.rec.state[i] = DONE
        self.rec.r["e2e_s"][i] = (self.clock.now() if done_s is None else done_s) - self.rec.arrival[i]
        self.ended(m)
        inst.request = -1
        if inst.handoff_to is not None:  # a migration's source (or a preemption's victim) done first
            self.migrations.abort(inst)
            self.release(inst)
            self.backend.released(inst, False)
        else:
            self.next_or_idle(inst)
        self.after()

    def next_or_idle(self, inst: Instance, keep_s: float | None = None) -> None:
        """Serve the oldest live request waiting for this model, else go idle under the keep-alive policy (or for
        ``keep_s``). Every instance that becomes free comes here (a finished request, a pre-warm, a migration
        destination whose migration is off), so no request waits while an instance of its model idles."""
        inst.abort, inst.migration_src = False, None
        rec = self.rec
        q = rec.wait_model[inst.info.name]
        while q:
            j = q.popleft()
            if rec.state[j] != WAITING:
                continue
            if self.expired(j):
                self._timeout(j)
                continue
            rec.unwait(j, ASSIGNED)
            rec.r["tier_decided"][j] = rec.r["tier_loaded"][j] = "gpu"
            self._run(inst, j)
            return
        self._go_idle(inst, keep_s)

    # ------------------------------------------------------------ idle instances: keep-alive, pre-warming, eviction
    def _go_idle(self, inst: Instance, keep_s: float | None = None) -> None:
        """Park ``inst`` on its GPUs for the keep-alive window (or unload it now and pre-warm it later)."""
        m, now = inst.info.name, self.clock.now()
        inst.state, inst.idle_since = "idle", now
        inst.server.dirty()
        self._retry_flag = True
        if keep_s is None:
            kd = self.keepalive.decide(m)
            if kd.prewarm_s > 0:
                self._evict(inst)
                self.clock.at(now + kd.prewarm_s, self._prewarm, m, inst.server,
                              max(kd.keep_alive_s - kd.prewarm_s, 0.0))
                return
            keep_s = kd.keep_alive_s
        self.idle_by_model[m][inst.id] = inst
        inst.version += 1
        if math.isfinite(keep_s):
            self.clock.at(now + keep_s, self._expire, inst, inst.version)

    def _prewarm(self, m: str, server: Server, keep_s: float) -> None:
        """Load ``m`` on ``server`` ahead of its next request, unless one is idle or the server lacks the GPUs."""
        self.stats["events"] += 1
        info = self.models[m]
        if self.idle_by_model[m] or server.free_gpus < info.gpus:
            return
        self.stats["prewarms"] += 1
        inst = self.new_instance(info, server)
        inst.prewarm_keep_s = keep_s
        self.gather(inst, server)
        self.log("prewarm", instance=inst.id, model=m, server=server.id)
        self.loads.enqueue(inst, server.view().best_tier(m), None, False, self.cache_to, self.tier_upgrade)

    def _expire(self, inst: Instance, version: int) -> None:
        if version != inst.version or inst.state != "idle":
            return
        self.stats["events"] += 1
        self._evict(inst)
        self.after()

    def _evict(self, inst: Instance) -> None:
        """Take an idle instance off its GPUs and demote its checkpoint (GPU → DRAM → SSD, as the policy says)."""
        m, server = inst.info.name, inst.server
        if self.idle_by_model[m].pop(inst.id, None) is not None:
            self.stats["idle_gpu_gb_s"] += inst.gpus * self.cluster.gpu_mem_gb * (self.clock.now() - inst.idle_since)
        self.release(inst)
        self.backend.released(inst, False)
        demoted = server.store_checkpoint(m, self.demote_to, self.models)
        if demoted:
            self.backend.storage_changed(server)
        self.log("evict", instance=inst.id, model=m, server=server.id, demoted=demoted)
        server.dirty()
        self._retry_flag = True

    def release(self, inst: Instance) -> None:
        """Free ``inst``'s GPUs (or hand them to the pending instance waiting for them)."""
        server = inst.server
        self.stats["gpu_seconds"] += inst.gpus * (self.clock.now() - inst.acquired_s)
        self.instances.pop(inst.id, None)
        server.instances.pop(inst.id, None)
        self.inst_count[inst.info.name] -= 1
        inst.version += 1
        inst.state = "gone"
        target, inst.handoff_to = inst.handoff_to, None
        if target is not None and target.state == "pending":
            take = min(inst.gpus, target.gpus - target.have)
            target.have += take
            if inst.gpus - take:
                server.give_gpus(inst.gpus - take)
            if target.have >= target.gpus:
                self.handoff(target)
        else:
            server.give_gpus(inst.gpus)
        server.dirty()
        self._retry_flag = True
