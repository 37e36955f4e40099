"""Discrete-event serverless cluster simulator (SimPy): cold starts, loading queues, migrations, keep-alive,
timeouts."""

from __future__ import annotations

import gc
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pandas as pd
import simpy

from schedulers.base import (
    ClusterView,
    KeepAlive,
    ModelInfo,
    Placement,
    Request,
    Scheduler,
    Tier,
    policy_storage,
)
from schedulers.cluster import Cluster
from schedulers.errors import SimulatorInvariantError
from schedulers.links import FairShareLink
from schedulers.metrics import REQUEST_COLUMNS, REQUEST_DTYPES
from schedulers.state import Instance, LoadJob, Server, generated_tokens
from schedulers.workload import RequestArrays

NEW, WAITING, ASSIGNED, RUNNING, DONE, TIMED_OUT = range(6)

TIER_ORDER: tuple[Tier, ...] = ("dram", "ssd", "remote")
MAX_ROUNDS = 100


@dataclass(frozen=True)
class SimConfig:
    """Simulator knobs: request timeout, the live-migration stop rule, how many waiting requests a retry asks
    about."""

    timeout_s: float = 300.0
    migration_stop_tokens: int = (
        20  # ServerlessLLM §5.3: stop when a round produced fewer new tokens than this
    )
    retry_batch: int = 8
    record_events: bool = False

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"sim.timeout_s={self.timeout_s!r} is not allowed; it must be > 0")
        if self.migration_stop_tokens < 1:
            raise ValueError(f"sim.migration_stop_tokens={self.migration_stop_tokens!r}; it must be ≥ 1")


@dataclass
class SimResult:
    """What a simulation produces: one row per request, the event log (if recorded), and run totals."""

    requests: pd.DataFrame
    events: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


class Simulator:
    """Replays a workload on a cluster under one scheduler and one keep-alive policy.

    Every handler is a callback on a SimPy timeout. Warm requests go to an idle instance of their model; the
    scheduler is asked only for cold starts and for requests that wait.
    """

    def __init__(
        self,
        cluster: Cluster,
        models: Mapping[str, ModelInfo],
        scheduler: Scheduler,
        keepalive: KeepAlive,
        config: SimConfig | None = None,
    ) -> None:
        self.cluster = cluster
        self.models = MappingProxyType(dict(models))
        self.scheduler = scheduler
        self.keepalive = keepalive
        self.cfg = config or SimConfig()
        # The policy's storage: what its migration and pre-warm loads write and whether they may upgrade (cold
        # starts carry it in their Placement), and where a keep-alive eviction may demote a checkpoint to.
        self.cache_to, self.tier_upgrade = policy_storage(scheduler)
        self.demote_to = tuple(t for t in keepalive.demote_to if t in self.cache_to)
        self.env = simpy.Environment()
        self._dirty: set[int] = set()
        self.servers = [Server(s, cluster, self._dirty) for s in range(cluster.servers)]
        self._views = tuple(s.view() for s in self.servers)
        self.store_link = FairShareLink(self.env, cluster.store_gbps * 1e9) if cluster.store_gbps else None
        self.instances: dict[int, Instance] = {}
        self.idle_by_model: dict[str, dict[int, Instance]] = {m: {} for m in models}
        self.inst_count: dict[str, int] = dict.fromkeys(models, 0)
        self.active: dict[str, int] = dict.fromkeys(models, 0)
        self.last_idle_start: dict[str, float] = {}
        self.wait_global: deque[int] = deque()
        self.wait_model: dict[str, deque[int]] = {m: deque() for m in models}
        self.wait_count: dict[str, int] = dict.fromkeys(models, 0)
        self.events: list[dict[str, Any]] = []
        self.stats: dict[str, float] = {
            "gpu_seconds": 0.0,
            "idle_gpu_gb_s": 0.0,
            "migrations": 0,
            "migrations_aborted": 0,
            "preemptions": 0,
            "loads": 0,
            "events": 0,
            "runtime_wait_s": 0.0,  # seconds loads spent getting a ready process (runtime start-up, pool waits)
            "pool_wait_s": 0.0,  # the part of it spent waiting for a pool worker to be ready
            "pool_reused": 0,  # workers given back after unload that were ready again
        }
        self._next_id = 0
        self._retry_flag = False
        self._retry_times: set[float] = set()
        self._n_waiting = 0

    # ------------------------------------------------------------------ running
    def run(self, reqs: RequestArrays) -> SimResult:
        """Simulate every request of ``reqs`` to completion or timeout; deterministic for a given input."""
        self._preload(reqs.models)
        n = len(reqs)
        self.arrival = reqs.arrival_s.tolist()
        self.model_of = [reqs.models[k] for k in reqs.model_idx.tolist()]
        self.inp = reqs.input_tokens.tolist()
        self.out = [max(int(o), 1) for o in reqs.output_tokens.tolist()]
        nan = math.nan
        self.state = [NEW] * n
        self.r: dict[str, list[Any]] = {
            c: [nan] * n
            for c in ("queue_s", "load_s", "ttft_s", "e2e_s", "placed_s", "enq_s", "load_start_s")
        }
        self.r.update(
            server=[-1] * n,
            tier_decided=[""] * n,
            tier_loaded=[""] * n,
            migration_s=[0.0] * n,
            timed_out=[False] * n,
            cold_start=[False] * n,
            migrated=[0] * n,
            preempted=[0] * n,
        )
        if n:
            self._at(self.arrival[0], self._on_arrival, 0)
        # The run allocates millions of short-lived, acyclic objects; the cyclic collector's scans of the
        # growing
        # heap made 1M requests superlinear, so it is paused for the run (refcounting still frees everything).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.env.run()
        finally:
            if was_enabled:
                gc.enable()
        for i in range(n):
            if self.state[i] == WAITING:
                self._timeout(i)
            elif self.state[i] not in (DONE, TIMED_OUT):
                raise SimulatorInvariantError(f"request {i} ended in state {self.state[i]}")
        for inst in list(self.instances.values()):
            self.stats["gpu_seconds"] += inst.gpus * (self.env.now - inst.acquired_s)
            if inst.state == "idle":
                self.stats["idle_gpu_gb_s"] += (
                    inst.gpus * self.cluster.gpu_mem_gb * (self.env.now - inst.idle_since)
                )
        self.stats["sim_end_s"] = self.env.now
        df = pd.DataFrame(
            {
                "request_id": range(n),
                "model": self.model_of,
                "arrival_s": self.arrival,
                "input_tokens": self.inp,
                "output_tokens": self.out,
                **{c: self.r[c] for c in REQUEST_COLUMNS if c in self.r},
            }
        )
        df = df.astype(REQUEST_DTYPES)
        return SimResult(df[[c for c in REQUEST_COLUMNS if c in df.columns]], self.events, self.stats)

    def _preload(self, models: tuple[str, ...]) -> None:
        """Spread checkpoints over the servers' SSDs (``ssd_replicas`` copies each, round-robin)."""
        k = 0
        for m in models:
            for _ in range(min(self.cluster.ssd_replicas, len(self.servers))):
                self.servers[k % len(self.servers)].ssd.insert(m, self.models[m].size_bytes)
                k += 1
        for server in self.servers:
            server.dirty()

    def _at(self, t: float, fn: Any, *args: Any) -> None:
        ev = self.env.timeout(max(t - self.env.now, 0.0))
        ev.callbacks.append(lambda _e: fn(*args))

    def log(self, kind: str, **fields: Any) -> None:
        if self.cfg.record_events:
            self.events.append({"t": self.env.now, "kind": kind, **fields})

    def view(self) -> ClusterView:
        """The read-only cluster view handed to the scheduler."""
        now = self.env.now
        waiting = {}
        for m, c in self.wait_count.items() if self._n_waiting else ():
            if c:
                q = self.wait_model[m]
                while q and self.state[q[0]] != WAITING:
                    q.popleft()
                waiting[m] = (c, self.arrival[q[0]] if q else now)
        if self._dirty:
            views = list(self._views)
            for sid in self._dirty:
                views[sid] = self.servers[sid].view()
            self._dirty.clear()
            self._views = tuple(views)
        return ClusterView(now, self._views, self.models, waiting, self.inst_count)

    def _request(self, i: int) -> Request:
        return Request(i, self.model_of[i], self.arrival[i], self.inp[i], self.out[i])

    # ------------------------------------------------------------------ requests
    def _on_arrival(self, i: int) -> None:
        self.stats["events"] += 1
        if i + 1 < len(self.arrival):
            self._at(self.arrival[i + 1], self._on_arrival, i + 1)
        m = self.model_of[i]
        if self.active[m] == 0 and m in self.last_idle_start:
            self.keepalive.observe_idle(m, self.env.now - self.last_idle_start.pop(m))
        idle = self.idle_by_model[m]
        if idle:
            inst = idle.pop(next(reversed(idle)))
            self.stats["idle_gpu_gb_s"] += (
                inst.gpus * self.cluster.gpu_mem_gb * (self.env.now - inst.idle_since)
            )
            self.r["tier_decided"][i] = self.r["tier_loaded"][i] = "gpu"
            self._run(inst, i)
        else:
            self._decide(i)
        self._after()

    def _decide(self, i: int) -> bool:
        decision = self.scheduler.schedule(self._request(i), self.view())
        if isinstance(decision, Placement):
            self._place(i, decision)
            return True
        if self.state[i] != WAITING:
            self._add_waiting(i)
        if (
            decision.retry_at_s is not None
            and decision.retry_at_s > self.env.now
            and decision.retry_at_s not in self._retry_times
        ):
            self._retry_times.add(decision.retry_at_s)
            self._at(decision.retry_at_s, self._retry_timer, decision.retry_at_s)
        return False

    def _add_waiting(self, i: int, front: bool = False) -> None:
        self.state[i] = WAITING
        m = self.model_of[i]
        if front:
            self.wait_global.appendleft(i)
            self.wait_model[m].appendleft(i)
        else:
            self.wait_global.append(i)
            self.wait_model[m].append(i)
        self.wait_count[m] += 1
        self._n_waiting += 1

    def _unwait(self, i: int, new_state: int) -> None:
        self.wait_count[self.model_of[i]] -= 1
        self._n_waiting -= 1
        self.state[i] = new_state

    def _expired(self, i: int) -> bool:
        return self.env.now - self.arrival[i] >= self.cfg.timeout_s

    def _timeout(self, i: int) -> None:
        if self.state[i] in (DONE, TIMED_OUT):
            raise SimulatorInvariantError(f"request {i} finished twice")
        if self.state[i] == WAITING:
            self.wait_count[self.model_of[i]] -= 1
            self._n_waiting -= 1
        self.state[i] = TIMED_OUT
        self.r["timed_out"][i] = True
        self.r["ttft_s"][i] = self.r["e2e_s"][i] = self.cfg.timeout_s
        self.log("timeout", request=i)

    def _retry_timer(self, t: float) -> None:
        self._retry_times.discard(t)
        self._retry_flag = True
        self._after()

    def _after(self) -> None:
        while self._retry_flag:
            self._retry_flag = False
            self._retry()

    def _retry(self) -> None:
        q = self.wait_global
        while q and self.state[q[0]] != WAITING:
            q.popleft()
        waits = 0
        for i in list(q):
            if waits >= self.cfg.retry_batch:
                break
            if self.state[i] != WAITING:
                continue
            if self._expired(i):
                self._timeout(i)
                continue
            if not self._decide(i):
                waits += 1

    # ------------------------------------------------------------------ instances
    def _new_instance(self, info: ModelInfo, server: Server) -> Instance:
        inst = Instance(self._next_id, info, server, self.env.now)
        self._next_id += 1
        self.instances[inst.id] = inst
        server.instances[inst.id] = inst
        self.inst_count[info.name] += 1
        return inst

    def gather(self, inst: Instance, server: Server) -> None:
        """Give ``inst`` free GPUs of its server, evicting idle instances (least recently idle first) if
        needed."""
        take = min(server.free_gpus, inst.gpus - inst.have)
        server.take_gpus(take)
        inst.have += take
        if inst.have < inst.gpus:
            victims = sorted(
                (x for x in server.instances.values() if x.state == "idle"), key=lambda x: x.idle_since
            )
            for victim in victims:
                if inst.have >= inst.gpus:
                    break
                self._evict(victim)
                take = min(server.free_gpus, inst.gpus - inst.have)
                server.take_gpus(take)
                inst.have += take

    def _place(self, i: int, d: Placement) -> None:
        m = self.model_of[i]
        server = self.servers[d.server]
        if d.tier != "remote" and m not in (server.dram if d.tier == "dram" else server.ssd):
            raise SimulatorInvariantError(
                f"placement of {m} on server {d.server} from {d.tier}, which lacks it"
            )
        if self.state[i] == WAITING:
            self._unwait(i, ASSIGNED)
        self.state[i] = ASSIGNED
        inst = self._new_instance(self.models[m], server)
        inst.request, inst.prompt_tokens = i, self.inp[i]
        inst.decision = d
        self.r["placed_s"][i] = self.env.now
        self.r["server"][i], self.r["cold_start"][i] = d.server, True
        self.r["tier_decided"][i] = self.r["tier_loaded"][i] = d.tier
        self.gather(inst, server)
        for pid in d.preemptions:
            self._preempt(self.instances[pid], inst)
        for mig in d.migrations:
            self._migrate(self.instances[mig.instance_id], self.servers[mig.dst_server], inst)
        if inst.state != "pending":
            return  # a preemption already handed over the last GPUs and started the load
        if inst.have >= inst.gpus:
            self._enqueue(inst, d.tier, d.loader_gbps, d.download_then_load, d.cache_to, d.tier_upgrade)
        elif not any(x.handoff_to is inst for x in server.instances.values()):
            raise SimulatorInvariantError(
                f"infeasible placement {d} for request {i}: {inst.have}/{inst.gpus} GPUs"
            )

    def handoff(self, inst: Instance) -> None:
        """``inst`` received all its GPUs from migrations or preemptions: start its load."""
        d = inst.decision
        assert d is not None
        self._enqueue(inst, d.tier, d.loader_gbps, d.download_then_load, d.cache_to, d.tier_upgrade)

    def ready(self, inst: Instance) -> None:
        self.stats["events"] += 1
        if inst.migration_src is not None:
            self._migration_loaded(inst)
        elif inst.abort or inst.request < 0:
            self._go_idle(inst, inst.prewarm_keep_s)
        else:
            i = inst.request
            self.r["load_s"][i] = self.env.now - self.r["load_start_s"][i]
            self._run(inst, i)
        self._after()

    def _run(self, inst: Instance, i: int) -> None:
        now, info = self.env.now, inst.info
        first = now + info.prefill_s(self.inp[i])
        if first - self.arrival[i] > self.cfg.timeout_s:
            self._timeout(i)
            inst.request = -1
            self.next_or_idle(inst)
            return
        if self.r["tier_loaded"][i] == "gpu":
            self.r["queue_s"][i], self.r["load_s"][i] = now - self.arrival[i], 0.0
            self.r["server"][i], self.r["cold_start"][i] = inst.server.id, False
        else:
            r = self.r
            r["queue_s"][i] = (r["placed_s"][i] - self.arrival[i]) + (r["load_start_s"][i] - r["enq_s"][i])
            r["migration_s"][i] += r["enq_s"][i] - r["placed_s"][i]
        self.state[i] = RUNNING
        inst.state, inst.request, inst.prompt_tokens = "busy", i, self.inp[i]
        inst.first_token_s = first
        inst.done_s = first + (self.out[i] - 1) * info.decode_s_per_token
        self.r["ttft_s"][i] = first - self.arrival[i]
        self.active[info.name] += 1
        inst.server.dirty()
        self.schedule_completion(inst)

    def schedule_completion(self, inst: Instance) -> None:
        inst.version += 1
        self._at(inst.done_s, self._complete, inst, inst.version)

    def _complete(self, inst: Instance, version: int) -> None:
        if version != inst.version:
            return
        self.stats["events"] += 1
        i, m = inst.request, inst.info.name
        if self.state[i] != RUNNING:
            raise SimulatorInvariantError(f"request {i} completed in state {self.state[i]}")
        self.state[i] = DONE
        self.r["e2e_s"][i] = self.env.now - self.arrival[i]
        self.active[m] -= 1
        if self.active[m] == 0:
            self.last_idle_start[m] = self.env.now
        inst.request = -1
        if inst.handoff_to is not None:
            self._source_finished(inst)
        else:
            self.next_or_idle(inst)
        self._after()

    def next_or_idle(self, inst: Instance) -> None:
        """Serve the oldest live request waiting for this model, else go idle under the keep-alive policy."""
        q = self.wait_model[inst.info.name]
        while q:
            j = q.popleft()
            if self.state[j] != WAITING:
                continue
            if self._expired(j):
                self._timeout(j)
                continue
            self._unwait(j, ASSIGNED)
            self.r["tier_decided"][j] = self.r["tier_loaded"][j] = "gpu"
            self._run(inst, j)
            return
        self._go_idle(inst)

    # ------------------------------------------------------------ idle instances: keep-alive, pre-warming, eviction

    def _go_idle(self, inst: Instance, keep_s: float | None = None) -> None:
        """Park ``inst`` on its GPUs for the keep-alive window (or unload it now and pre-warm it later)."""
        m = inst.info.name
        inst.state, inst.idle_since, inst.abort = "idle", self.env.now, False
        inst.migration_src = None
        inst.server.dirty()
        self._retry_flag = True
        if keep_s is None:
            kd = self.keepalive.decide(m)
            if kd.prewarm_s > 0:
                self._evict(inst)
                self._at(
                    self.env.now + kd.prewarm_s,
                    self._prewarm,
                    m,
                    inst.server,
                    max(kd.keep_alive_s - kd.prewarm_s, 0.0),
                )
                return
            keep_s = kd.keep_alive_s
        self.idle_by_model[m][inst.id] = inst
        inst.version += 1
        if math.isfinite(keep_s):
            self._at(self.env.now + keep_s, self._expire, inst, inst.version)

    def _prewarm(self, m: str, server: Server, keep_s: float) -> None:
        self.stats["events"] += 1
        info = self.models[m]
        if self.idle_by_model[m] or server.free_gpus < info.gpus:
            return
        inst = self._new_instance(info, server)
        inst.prewarm_keep_s = keep_s
        self.gather(inst, server)
        self.log("prewarm", instance=inst.id, model=m, server=server.id)
        self._enqueue(inst, server.view().best_tier(m), None, False, self.cache_to, self.tier_upgrade)

    def _expire(self, inst: Instance, version: int) -> None:
        if version != inst.version or inst.state != "idle":
            return
        self.stats["events"] += 1
        self._evict(inst)
        self._after()

    def _evict(self, inst: Instance) -> None:
        """Take an idle instance off its GPUs and demote its checkpoint (GPU → DRAM → SSD, as the policy
        says)."""
        m, server = inst.info.name, inst.server
        if self.idle_by_model[m].pop(inst.id, None) is not None:
            self.stats["idle_gpu_gb_s"] += inst.gpus * self.cluster.gpu_mem_gb * (self.env.now - inst.idle_since)
        self._release(inst)
        self._give_back_worker(inst)
        demoted = self._store_checkpoint(server, m, self.demote_to)
        self.log("evict", instance=inst.id, model=m, server=server.id, demoted=demoted)
        server.dirty()
        self._retry_flag = True

    def _give_back_worker(self, inst: Instance) -> None:
        """A pool runtime takes back the process of an instance that unloaded (not of a killed one)."""
        if inst.server.pool is not None and inst.server.pool.give_back(self.env.now):
            self.stats["pool_reused"] += 1

    def _release(self, inst: Instance) -> None:
        """Free ``inst``'s GPUs (or hand them to the pending instance waiting for them)."""
        server = inst.server
        self.stats["gpu_seconds"] += inst.gpus * (self.env.now - inst.acquired_s)
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

    # ------------------------------------------------------------ loading queues, tier reads, checkpoint caching

    def _enqueue(
        self,
        inst: Instance,
        tier: Tier,
        loader_gbps: float | None,
        dtl: bool,
        cache_to: tuple[Tier, ...],
        upgrade: bool,
    ) -> None:
        server, n = inst.server, inst.info.size_bytes
        bw = min(server.gbps[tier], loader_gbps or math.inf)
        est = (
            n / (server.gbps["remote"] * 1e9) + n / (loader_gbps * 1e9) if dtl and loader_gbps else n / (bw * 1e9)
        ) + inst.info.startup_s  # a pool's wait for a worker is added when the load starts and knows it
        slot = server.reserve_slot(self.env.now, est)
        if tier in ("dram", "ssd"):
            store = server.dram if tier == "dram" else server.ssd
            store.pinned[inst.info.name] = store.pinned.get(inst.info.name, 0) + 1
        inst.state = "loading"
        if inst.request >= 0 and inst.migration_src is None:
            self.r["enq_s"][inst.request] = self.env.now
        server.queue.append(LoadJob(inst, tier, loader_gbps, dtl, est, cache_to, upgrade, slot))
        self._pump(server)

    def _pump(self, server: Server) -> None:
        while server.active_loads < len(server.slot_free_at) and server.queue:
            job = server.queue.popleft()
            server.active_loads += 1
            self._start_load(job, self.env.now)

    def _link(self, server: Server, tier: str) -> FairShareLink:
        if tier == "remote" and self.store_link is not None:
            return self.store_link
        if tier not in server.links:
            server.links[tier] = FairShareLink(self.env, server.gbps[tier] * 1e9)
        link: FairShareLink = server.links[tier]
        return link

    def _start_load(self, job: LoadJob, start: float) -> None:
        """A load takes its slot: the runtime's start-up (getting a ready process), then the bytes."""
        inst = job.instance
        if job.upgrade and not job.download_then_load:
            self._upgrade_tier(job)
        if inst.request >= 0 and inst.migration_src is None:
            self.r["load_start_s"][inst.request] = start
            self.r["tier_loaded"][inst.request] = job.tier
        startup = self._runtime_startup(job, start)
        if startup > 0:
            self._at(start + startup, self._transfer, job, start)
        else:
            self._transfer(job, start)

    def _runtime_startup(self, job: LoadJob, start: float) -> float:
        """Seconds from the slot's start until the load has a ready process: the model's start-up on this cluster's
        runtime, after waiting for a ready worker when the server runs a pool (the wait also moves the slot's
        estimated free time, as a tier upgrade does)."""
        server = job.instance.server
        wait = server.pool.acquire(start) - start if server.pool is not None else 0.0
        if wait > 0:
            server.correct_slot(job.slot, wait)
            job.est_s += wait
            self.stats["pool_wait_s"] += wait
        startup = wait + job.instance.info.startup_s
        self.stats["runtime_wait_s"] += startup
        job.startup_s = startup
        return startup

    def _transfer(self, job: LoadJob, start: float) -> None:
        """Read the checkpoint's bytes from the job's tier (a download first for download-then-load policies)."""
        server, n = job.instance.server, job.instance.info.size_bytes

        def done() -> None:
            self._load_done(job, start)

        loader_gbps = job.loader_gbps
        if job.download_then_load and loader_gbps:
            # KServe / Ray Serve: the whole checkpoint lands on local disk first, then torch.load reads it.
            def second() -> None:
                self._at(self.env.now + n / (loader_gbps * 1e9), done)

            self._link(server, "remote").start(n, server.gbps["remote"] * 1e9, second)
        else:
            cap = min(server.gbps[job.tier], job.loader_gbps or math.inf) * 1e9
            self._link(server, job.tier).start(n, cap, done)

    def _upgrade_tier(self, job: LoadJob) -> None:
        """A fast loader reads the fastest copy present when the load starts (an earlier load may have cached
        it); the loading-queue time reserved for it at placement shrinks to the new tier's estimate, so later
        startup estimates (q in q + n/b) see the queue as it now is."""
        server, m = job.instance.server, job.instance.info.name
        best: Tier = "dram" if m in server.dram else "ssd" if m in server.ssd else "remote"
        if TIER_ORDER.index(best) >= TIER_ORDER.index(job.tier):
            return
        if job.tier in ("dram", "ssd"):
            old = server.dram if job.tier == "dram" else server.ssd
            old.pinned[m] -= 1
        new = server.dram if best == "dram" else server.ssd
        new.pinned[m] = new.pinned.get(m, 0) + 1
        self.log("tier_upgrade", instance=job.instance.id, model=m, server=server.id, old=job.tier, new=best)
        job.tier = best
        info = job.instance.info
        est = info.size_bytes / (min(server.gbps[best], job.loader_gbps or math.inf) * 1e9) + info.startup_s
        server.correct_slot(job.slot, est - job.est_s)
        job.est_s = est

    def _store_checkpoint(
        self, server: Server, model: str, tiers: tuple[Tier, ...], through: bool = False
    ) -> list[tuple[str, str]]:
        """Put ``model`` into the chain ``tiers`` (DRAM before SSD); returns (checkpoint, tier) for each copy kept.

        ``through`` (after a load; a policy's ``cache_to``): write-through, every tier of the chain that accepts
        ``model`` keeps a copy at once. Otherwise (a keep-alive demotion) the first tier that accepts it keeps it.
        Either way a tier that refuses it (larger than the tier, no room beside pinned copies, a 0-byte tier)
        passes it to the next tier, and each tier's LRU victims fall to the next tier of the chain.
        """
        stored: list[tuple[str, str]] = []
        pending = [model]
        changed = False
        for tier in tiers:
            store = server.dram if tier == "dram" else server.ssd
            spill: list[str] = []
            carry = False
            for name in pending:
                new = name not in store
                evicted = store.insert(name, self.models[name].size_bytes)
                if evicted is None:
                    carry = carry or name == model
                    continue
                stored.append((name, tier))
                spill.extend(evicted)
                changed = changed or new or bool(evicted)
                carry = carry or (through and name == model)
            pending = [*spill, model] if carry else spill
        if changed:
            server.dirty()
        return stored

    def _load_done(self, job: LoadJob, start: float) -> None:
        self.stats["events"] += 1
        self.stats["loads"] += 1
        inst, server = job.instance, job.instance.server
        server.active_loads -= 1
        if server.pool is not None:  # the cold start is over: its worker's replacement may start
            server.pool.loaded(self.env.now)
        m, dur = inst.info.name, self.env.now - start
        floor_s = inst.info.size_bytes / (server.gbps[job.tier] * 1e9) + job.startup_s
        if dur < floor_s * (1 - 1e-9):
            raise SimulatorInvariantError(
                f"load of {m} from {job.tier} took {dur} s < bytes/bandwidth {floor_s} s"
            )
        if job.tier in ("dram", "ssd"):
            store = server.dram if job.tier == "dram" else server.ssd
            store.pinned[m] -= 1
            store.touch(m)
        if job.cache_to:
            self._store_checkpoint(server, m, job.cache_to, through=True)
        self.log(
            "load",
            instance=inst.id,
            model=m,
            server=server.id,
            tier=job.tier,
            bytes=inst.info.size_bytes,
            start=start,
            duration_s=dur,
            runtime_s=job.startup_s,
            gbps=server.gbps[job.tier],
        )
        self._pump(server)
        if inst.info.build_s > 0:
            self._at(self.env.now + inst.info.build_s, self.ready, inst)
        else:
            self.ready(inst)

    # ------------------------------------------------------------ live migration (ServerlessLLM §5) and preemption

    def _preempt(self, victim: Instance, target: Instance) -> None:
        """Kill a running instance (Shepherd*): its request restarts from scratch, its GPUs go to
        ``target``."""
        i = victim.request
        if victim.state != "busy" or self.state[i] != RUNNING:
            raise SimulatorInvariantError(f"preempting instance {victim.id} in state {victim.state}")
        self.stats["preemptions"] += 1
        self.r["preempted"][i] += 1
        self.active[victim.info.name] -= 1
        victim.request = -1
        victim.handoff_to = target
        self.log("preempt", instance=victim.id, request=i, server=victim.server.id)
        self._release(victim)
        self._add_waiting(i, front=True)

    def _migrate(self, src: Instance, dst: Server, target: Instance) -> None:
        """Start migrating busy ``src`` to ``dst``: the destination loads the model, then re-prefills in
        rounds."""
        if src.state != "busy" or src.migrating_to is not None:
            raise SimulatorInvariantError(f"migrating instance {src.id} in state {src.state}")
        src.handoff_to = target
        dest = self._new_instance(src.info, dst)
        dest.migration_src, dest.prompt_tokens, dest.request = src, src.prompt_tokens, -1
        src.migrating_to = dest
        self.gather(dest, dst)
        if dest.have < dest.gpus:
            raise SimulatorInvariantError(f"migration target server {dst.id} lacks GPUs for {src.info.name}")
        src.server.dirty()
        self.log(
            "migration_start",
            instance=src.id,
            request=src.request,
            src=src.server.id,
            dst=dst.id,
            model=src.info.name,
        )
        d = target.decision
        cache_to, upgrade = (d.cache_to, d.tier_upgrade) if d is not None else (self.cache_to, self.tier_upgrade)
        self._enqueue(dest, dst.view().best_tier(src.info.name), None, False, cache_to, upgrade)

    def _migration_loaded(self, dest: Instance) -> None:
        """The destination has the model: plan the re-prefill rounds until a round yields < stop-token new
        tokens."""
        src = dest.migration_src
        assert src is not None
        if dest.abort or src.state != "busy" or src.migrating_to is not dest:
            self._go_idle(dest)
            return
        info, d = src.info, src.info.decode_s_per_token
        gen = lambda t: generated_tokens(t, src.first_token_s, d, src.done_s)  # noqa: E731
        t = self.env.now
        tokens = src.prompt_tokens + gen(t)
        dest.state = "syncing"
        for k in range(MAX_ROUNDS):
            t_next = t + info.prefill_s(tokens)
            new = gen(t_next) - gen(t)
            self.log(
                "migration_round",
                instance=src.id,
                round=k,
                tokens=tokens,
                start=t,
                end=t_next,
                new_tokens=new,
            )
            if t_next >= src.done_s:
                return  # the source finishes first; its completion aborts the migration
            if new < self.cfg.migration_stop_tokens:
                break
            tokens, t = new, t_next
        self._at(t_next, self._migration_stop, src, dest, src.version, new)

    def _migration_stop(self, src: Instance, dest: Instance, version: int, last: int) -> None:
        """The source stops; the destination prefills the last few tokens and continues decoding the
        request."""
        if version != src.version or src.migrating_to is not dest:
            return
        self.stats["events"] += 1
        self.stats["migrations"] += 1
        i, info = src.request, src.info
        d = info.decode_s_per_token
        done_tokens = generated_tokens(self.env.now, src.first_token_s, d, src.done_s)
        resume = self.env.now + info.prefill_s(max(last, 1))
        remaining = self.out[i] - done_tokens
        dest.state, dest.request, dest.migration_src = "busy", i, None
        dest.done_s = resume + remaining * d
        dest.first_token_s = dest.done_s - (self.out[i] - 1) * d  # so that generated_tokens() stays exact
        self.r["migration_s"][i] += resume - self.env.now
        self.r["migrated"][i] += 1
        src.migrating_to = None
        self.log(
            "migration_done",
            instance=src.id,
            request=i,
            dst_instance=dest.id,
            src=src.server.id,
            dst=dest.server.id,
            pause_s=resume - self.env.now,
        )
        self._release(src)  # hands the GPUs to the waiting placement
        self._give_back_worker(src)
        dest.server.dirty()
        self.schedule_completion(dest)
        self._after()

    def _source_finished(self, src: Instance) -> None:
        """A migrating (or handing-off) instance finished its request first: abort and pass its GPUs on."""
        dest: Any = src.migrating_to
        if dest is not None:
            self.stats["migrations_aborted"] += 1
            self.log("migration_aborted", instance=src.id, dst_instance=dest.id)
            src.migrating_to = None
            if dest.state == "syncing":
                self._go_idle(dest)
            else:
                dest.abort = True
        self._release(src)
        self._give_back_worker(src)
