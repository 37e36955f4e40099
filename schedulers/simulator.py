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

from schedulers import idle, loading, migration
from schedulers.base import ClusterView, KeepAlive, ModelInfo, Placement, Request, Scheduler
from schedulers.cluster import Cluster
from schedulers.errors import SimulatorInvariantError
from schedulers.links import FairShareLink
from schedulers.metrics import REQUEST_COLUMNS, REQUEST_DTYPES
from schedulers.state import Instance, Server
from schedulers.workload import RequestArrays

NEW, WAITING, ASSIGNED, RUNNING, DONE, TIMED_OUT = range(6)


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
            tier=[""] * n,
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
            self.r["tier"][i] = "gpu"
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
                idle.evict(self, victim)
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
        self.r["server"][i], self.r["tier"][i], self.r["cold_start"][i] = d.server, d.tier, True
        self.gather(inst, server)
        for pid in d.preemptions:
            migration.preempt(self, self.instances[pid], inst)
        for mig in d.migrations:
            migration.migrate(self, self.instances[mig.instance_id], self.servers[mig.dst_server], inst)
        if inst.state != "pending":
            return  # a preemption already handed over the last GPUs and started the load
        if inst.have >= inst.gpus:
            loading.enqueue(self, inst, d.tier, d.loader_gbps, d.download_then_load, d.cache_to)
        elif not any(x.handoff_to is inst for x in server.instances.values()):
            raise SimulatorInvariantError(
                f"infeasible placement {d} for request {i}: {inst.have}/{inst.gpus} GPUs"
            )

    def handoff(self, inst: Instance) -> None:
        """``inst`` received all its GPUs from migrations or preemptions: start its load."""
        d = inst.decision
        assert d is not None
        loading.enqueue(self, inst, d.tier, d.loader_gbps, d.download_then_load, d.cache_to)

    def ready(self, inst: Instance) -> None:
        self.stats["events"] += 1
        if inst.migration_src is not None:
            migration.migration_loaded(self, inst)
        elif inst.abort or inst.request < 0:
            idle.go_idle(self, inst, inst.prewarm_keep_s)
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
        if self.r["tier"][i] == "gpu":
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
            migration.source_finished(self, inst)
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
            self.r["tier"][j] = "gpu"
            self._run(inst, j)
            return
        idle.go_idle(self, inst)
