"""The serverless cluster's mutable state, one data model for the simulator and the real controller: servers with
GPUs, checkpoint tiers (LRU) and loading queues, and model instances (``schedulers/lifecycle.py`` changes them)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass

from schedulers.base import InstanceView, ModelInfo, Placement, ServerView, Tier
from schedulers.cluster import Cluster
from schedulers.errors import SimulatorInvariantError


class Instance:
    """One model instance on a server: pending (gathering GPUs), loading, syncing (a migration destination
    re-prefilling), busy (decoding a request), idle, or gone."""

    __slots__ = (
        "abort",
        "acquired_s",
        "decision",
        "done_s",
        "first_token_s",
        "gpus",
        "handoff_to",
        "have",
        "id",
        "idle_since",
        "info",
        "migrating_to",
        "migration_src",
        "prewarm_keep_s",
        "prompt_tokens",
        "request",
        "server",
        "state",
        "version",
    )

    def __init__(self, iid: int, info: ModelInfo, server: Server, now: float) -> None:
        self.id = iid
        self.info = info
        self.server = server
        self.gpus = info.gpus
        self.have = (
            0  # GPUs gathered so far (a pending instance waits for migrations/preemptions to hand theirs)
        )
        self.state = "pending"
        self.request = -1
        self.prompt_tokens = 0
        self.decision: Placement | None = None
        self.version = 0  # bumped to invalidate scheduled completion/expiry events
        self.acquired_s = now
        self.idle_since = now
        self.first_token_s = 0.0
        self.done_s = 0.0
        self.handoff_to: Instance | None = None  # pending instance that receives our GPUs when we stop
        self.migrating_to: Instance | None = None
        self.migration_src: Instance | None = None
        self.abort = False  # migration target whose source finished first: become idle when loaded
        self.prewarm_keep_s: float | None = None


@dataclass
class LoadJob:
    """A queued load: the instance, the tier to read, its rate caps, and the estimated duration (runtime start-up
    included)."""

    instance: Instance
    tier: Tier
    loader_gbps: float | None
    download_then_load: bool
    est_s: float
    cache_to: tuple[Tier, ...] = ("dram", "ssd")
    upgrade: bool = True  # may switch to a faster local copy when it starts (the policy's tier_upgrade)
    slot: int = 0  # the loading slot whose estimated free time ``est_s`` was added to
    startup_s: float = 0.0  # runtime start-up it paid once it had its slot (set when the load starts)
    start_s: float = 0.0  # when it took its slot


class TierStore:
    """A capacity-bounded checkpoint tier (DRAM or SSD) with LRU order; checkpoints being read are pinned."""

    def __init__(self, name: str, capacity_bytes: int) -> None:
        self.name = name
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.items: OrderedDict[str, int] = OrderedDict()
        self.pinned: dict[str, int] = {}
        self._names: frozenset[str] | None = frozenset()

    def names(self) -> frozenset[str]:
        """The checkpoints held, as the frozen set a ``ServerView`` carries (cached until membership
        changes: rebuilding it on every view was a large share of a 1M-request run)."""
        if self._names is None:
            self._names = frozenset(self.items)
        return self._names

    def __contains__(self, model: object) -> bool:
        return model in self.items

    def touch(self, model: str) -> None:
        if model in self.items:
            self.items.move_to_end(model)

    def insert(self, model: str, nbytes: int) -> list[str] | None:
        """Add ``model``, evicting unpinned LRU entries; returns the evicted names, or None if it cannot
        fit."""
        if model in self.items:
            self.items.move_to_end(model)
            return []
        if nbytes > self.capacity_bytes:
            return None
        evicted: list[str] = []
        for victim in list(self.items):
            if self.used_bytes + nbytes <= self.capacity_bytes:
                break
            if self.pinned.get(victim, 0) == 0:
                self.used_bytes -= self.items.pop(victim)
                evicted.append(victim)
                self._names = None
        if self.used_bytes + nbytes > self.capacity_bytes:
            return None
        self.items[model] = nbytes
        self._names = None
        self.used_bytes += nbytes
        if self.used_bytes > self.capacity_bytes:
            raise SimulatorInvariantError(
                f"{self.name} tier over capacity: {self.used_bytes} > {self.capacity_bytes}"
            )
        return evicted


class Server:
    """A server's mutable state; ``view()`` returns a cached read-only ``ServerView`` rebuilt after each
    change."""

    def __init__(self, sid: int, cluster: Cluster, dirty_set: set[int] | None = None) -> None:
        self.id = sid
        self._dirty_set = dirty_set if dirty_set is not None else set()
        self.num_gpus = cluster.gpus_per_server
        self.free_gpus = cluster.gpus_per_server
        self.dram = TierStore(f"server {sid} DRAM", cluster.dram_bytes)
        self.ssd = TierStore(f"server {sid} SSD", cluster.ssd_bytes)
        self.gbps: dict[str, float] = {
            "dram": cluster.dram_gbps,
            "ssd": cluster.ssd_gbps,
            "remote": cluster.remote_gbps,
        }
        self.instances: dict[int, Instance] = {}
        self.queue: deque[LoadJob] = deque()
        self.active_loads = 0
        self.slot_free_at = [0.0] * cluster.load_slots  # estimated time each loading slot frees up
        self._view: ServerView | None = None

    def dirty(self) -> None:
        self._view = None
        self._dirty_set.add(self.id)

    def take_gpus(self, n: int) -> None:
        self.free_gpus -= n
        if self.free_gpus < 0:
            raise SimulatorInvariantError(f"server {self.id}: GPUs over-allocated (free {self.free_gpus})")
        self.dirty()

    def give_gpus(self, n: int) -> None:
        self.free_gpus += n
        if self.free_gpus > self.num_gpus:
            raise SimulatorInvariantError(f"server {self.id}: more GPUs freed than it has ({self.free_gpus})")
        self.dirty()

    def store(self, tier: Tier) -> TierStore:
        """The DRAM or SSD tier."""
        return self.dram if tier == "dram" else self.ssd

    def best_local_tier(self, model: str) -> Tier:
        """The fastest tier holding ``model`` here (``remote`` when neither DRAM nor SSD does)."""
        return "dram" if model in self.dram else "ssd" if model in self.ssd else "remote"

    def pin(self, model: str, tier: Tier) -> None:
        """A load reads ``model`` from ``tier``: the tier's LRU must not evict it meanwhile."""
        if tier in ("dram", "ssd"):
            store = self.store(tier)
            store.pinned[model] = store.pinned.get(model, 0) + 1

    def unpin(self, model: str, tier: Tier, touch: bool = False) -> None:
        if tier in ("dram", "ssd"):
            store = self.store(tier)
            store.pinned[model] -= 1
            if touch:
                store.touch(model)

    def store_checkpoint(self, model: str, tiers: tuple[Tier, ...], models: Mapping[str, ModelInfo],
                         through: bool = False) -> list[tuple[str, str]]:
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
            store = self.store(tier)
            spill: list[str] = []
            carry = False
            for name in pending:
                new = name not in store
                evicted = store.insert(name, models[name].size_bytes)
                if evicted is None:
                    carry = carry or name == model
                    continue
                stored.append((name, tier))
                spill.extend(evicted)
                changed = changed or new or bool(evicted)
                carry = carry or (through and name == model)
            pending = [*spill, model] if carry else spill
        if changed:
            self.dirty()
        return stored

    def queue_free_at(self) -> float:
        """When the loading queue is expected to drain (estimates of the loads enqueued so far)."""
        return min(self.slot_free_at)

    def reserve_slot(self, now: float, est_s: float) -> int:
        """Add a load's estimate to the slot that frees first; returns that slot (to correct it later)."""
        i = min(range(len(self.slot_free_at)), key=self.slot_free_at.__getitem__)
        self.slot_free_at[i] = max(now, self.slot_free_at[i]) + est_s
        self.dirty()
        return i

    def correct_slot(self, slot: int, delta_s: float) -> None:
        """A reserved load turned out ``delta_s`` longer (negative: shorter) than estimated."""
        self.slot_free_at[slot] += delta_s
        self.dirty()

    def view(self) -> ServerView:
        """The read-only view policies see, cached until the server changes (it holds no clock-dependent
        values)."""
        if self._view is None:
            insts = []
            idle = 0
            for inst in self.instances.values():
                state = inst.state
                if state == "busy":
                    insts.append(_instance_view(inst))
                elif state == "idle":
                    idle += inst.gpus
                    insts.append(_instance_view(inst))
            self._view = ServerView(
                self.id,
                self.num_gpus,
                self.free_gpus,
                idle,
                self.queue_free_at(),
                self.dram.names(),
                self.ssd.names(),
                self.gbps["dram"],
                self.gbps["ssd"],
                self.gbps["remote"],
                tuple(insts),
            )
        return self._view


def _instance_view(inst: Instance) -> InstanceView:
    busy = inst.state == "busy"
    return InstanceView(
        inst.id,
        inst.info.name,
        inst.server.id,
        inst.gpus,
        busy,
        inst.request if busy else None,
        inst.prompt_tokens,
        inst.first_token_s,
        inst.done_s,
        inst.info.decode_s_per_token,
        None if busy else inst.idle_since,
        inst.migrating_to is not None or inst.handoff_to is not None,
    )


def generated_tokens(t: float, first_token_s: float, decode_s: float, done_s: float) -> int:
    """Output tokens produced by time ``t``: one at the first token, then one per ``decode_s``."""
    if t < first_token_s:
        return 0
    if t >= done_s:
        return 1 + round((done_s - first_token_s) / decode_s) if decode_s > 0 else 1
    return 1 + int((t - first_token_s) / decode_s) if decode_s > 0 else 1
