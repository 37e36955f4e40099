"""The scheduling contract: read-only cluster views in, decisions out (shared by the simulator and a real
controller)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

# Where a checkpoint is read from when an instance starts. "gpu" means a warm instance served the request.
Tier = Literal["gpu", "dram", "ssd", "remote"]
LOCAL_TIERS: tuple[Tier, ...] = ("dram", "ssd")
# ServerlessLLM's checkpoint store: a pinned DRAM pool and the local SSD, both written after a load (§4, §5).
SLLM_CACHE: tuple[Tier, ...] = ("dram", "ssd")


@dataclass(frozen=True)
class Request:
    """One inference request: which model, when it arrived, and its prompt and output lengths in tokens."""

    request_id: int
    model: str
    arrival_s: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class ModelInfo:
    """What a policy needs to know about a model: checkpoint size, GPUs per instance, and its speed on this
    cluster. ``startup_s``: what a cold start on this cluster spends getting a ready process (the runtime's
    hand-off, or a fresh process's start + imports; ``Cluster.startup_s``), besides any wait for a pool worker."""

    name: str
    size_bytes: int
    gpus: int
    prefill_s_per_token: float
    prefill_base_s: float
    decode_s_per_token: float
    build_s: float = 0.0
    startup_s: float = 0.0

    def prefill_s(self, tokens: int) -> float:
        """Prefill time of ``tokens`` tokens (linear profile: base + per-token)."""
        return self.prefill_base_s + tokens * self.prefill_s_per_token


class InstanceView(NamedTuple):
    """Immutable like the other views; a NamedTuple because the simulator rebuilds these on its hot path.

    A model instance on a server's GPUs. ``busy`` instances are decoding ``request_id``; their progress is
    given by times, so a view stays exact while nothing changes (tokens at any moment via ``tokens_done``)."""

    instance_id: int
    model: str
    server: int
    gpus: int
    busy: bool
    request_id: int | None = None
    prompt_tokens: int = 0
    first_token_s: float = 0.0
    done_s: float = 0.0
    decode_s_per_token: float = 0.0
    idle_since_s: float | None = None
    migrating: bool = False

    def generated(self, now_s: float) -> int:
        """Output tokens produced by ``now_s``: one at the first token, then one per decode step."""
        if not self.busy or now_s < self.first_token_s:
            return 0
        d = self.decode_s_per_token
        end = min(now_s, self.done_s)
        return 1 + int((end - self.first_token_s) / d) if d > 0 else 1

    def tokens_done(self, now_s: float) -> int:
        """Prompt + generated tokens at ``now_s``: what a live migration must re-prefill at the
        destination."""
        return self.prompt_tokens + self.generated(now_s) if self.busy else 0


class ServerView(NamedTuple):
    """(A NamedTuple for construction speed, read-only like the frozen dataclasses.)

    One server as a policy sees it: free and idle GPUs, loading queue, where checkpoints sit, bandwidths.

    ``idle_gpus`` are held by idle (kept-alive) instances, which a placement may evict; ``queue_free_at_s``
    is when
    the server's loading queue is expected to drain (so the wait q at time t is ``queue_s(t)``).
    """

    server_id: int
    num_gpus: int
    free_gpus: int
    idle_gpus: int
    queue_free_at_s: float
    dram_models: frozenset[str]
    ssd_models: frozenset[str]
    dram_gbps: float  # DRAM → GPU
    ssd_gbps: float  # SSD → GPU (through DRAM)
    remote_gbps: float  # remote store → GPU, the network link
    instances: tuple[InstanceView, ...] = ()

    @property
    def available_gpus(self) -> int:
        """GPUs a placement can have right away: free ones plus those of idle instances."""
        return self.free_gpus + self.idle_gpus

    def queue_s(self, now_s: float) -> float:
        """Estimated wait before a load enqueued at ``now_s`` starts (q in q + n/b)."""
        return max(0.0, self.queue_free_at_s - now_s)

    def best_tier(self, model: str) -> Tier:
        """The fastest tier on this server that holds ``model``'s checkpoint."""
        if model in self.dram_models:
            return "dram"
        if model in self.ssd_models:
            return "ssd"
        return "remote"

    def tier_gbps(self, tier: Tier) -> float:
        """Bandwidth of ``tier`` towards this server's GPUs, in GB/s."""
        if tier == "ssd":
            return self.ssd_gbps
        if tier == "remote":
            return self.remote_gbps
        return self.dram_gbps


@dataclass(frozen=True)
class ClusterView:
    """The whole cluster at ``now_s``: servers, model facts, and requests waiting per model (count, oldest
    arrival)."""

    now_s: float
    servers: tuple[ServerView, ...]
    models: Mapping[str, ModelInfo]
    waiting: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    instances_per_model: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Migration:
    """Live-migrate the running ``instance_id`` to ``dst_server`` (ServerlessLLM §5: token-based, in
    rounds)."""

    instance_id: int
    dst_server: int
    estimated_s: float = 0.0


@dataclass(frozen=True)
class Placement:
    """Start an instance of the request's model on ``server``, reading its checkpoint from ``tier``.

    ``migrations`` move running instances away first; ``preemptions`` kill them (their requests restart).
    ``loader_gbps`` caps the loading speed (None: the tier's bandwidth, i.e. a fast loader);
    ``download_then_load`` downloads the whole checkpoint over the link before loading (KServe, Ray Serve).
    ``cache_to``: tiers written once the load lands, write-through (each tier that accepts it keeps a copy;
    ServerlessLLM's store: pinned DRAM and SSD). ``tier_upgrade``: a queued load may switch to a faster local
    copy that an earlier load put on the server before this one starts (False: it reads the decided tier).
    """

    server: int
    tier: Tier
    estimated_startup_s: float = 0.0
    migrations: tuple[Migration, ...] = ()
    preemptions: tuple[int, ...] = ()
    loader_gbps: float | None = None
    download_then_load: bool = False
    cache_to: tuple[Tier, ...] = SLLM_CACHE
    tier_upgrade: bool = True


def check_cache_to(cache_to: object, key: str = "scheduler.cache_to") -> tuple[Tier, ...]:
    """Validate a list of checkpoint tiers: an ordered subset of DRAM → SSD (``[]``: keep no copy)."""
    tiers = tuple(str(t) for t in cache_to) if isinstance(cache_to, Iterable) and not isinstance(cache_to, str) \
        else None
    if (
        tiers is None
        or any(t not in LOCAL_TIERS for t in tiers)
        or list(tiers) != sorted(tiers, key=LOCAL_TIERS.index)
        or len(set(tiers)) != len(tiers)
    ):
        raise ValueError(
            f"{key}={cache_to!r} is not allowed; use an ordered subset of {list(LOCAL_TIERS)} "
            f"(e.g. [dram, ssd], [ssd] or [])"
        )
    return tiers  # type: ignore[return-value]


@dataclass(frozen=True)
class StorageScheduler:
    """The checkpoint storage a policy's loads use (a base of the scheduler dataclasses; the option YAML sets it).

    ``cache_to``: tiers every load the policy causes writes the checkpoint to (cold starts, migration
    destinations, pre-warms); a keep-alive demotion only goes to tiers in it too. ``tier_upgrade``: whether a
    queued load reads a faster local copy that landed while it waited. The defaults are ServerlessLLM's store.
    """

    cache_to: tuple[Tier, ...] = SLLM_CACHE
    tier_upgrade: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_to", check_cache_to(self.cache_to))
        if not isinstance(self.tier_upgrade, bool):
            raise ValueError(f"scheduler.tier_upgrade={self.tier_upgrade!r} is not allowed; it must be true or false")

    def place(
        self,
        server: int,
        tier: Tier,
        estimated_startup_s: float = 0.0,
        migrations: tuple[Migration, ...] = (),
        preemptions: tuple[int, ...] = (),
    ) -> Placement:
        """A ``Placement`` carrying this policy's storage behaviour."""
        return Placement(server, tier, estimated_startup_s, migrations, preemptions, cache_to=self.cache_to,
                         tier_upgrade=self.tier_upgrade)


def policy_storage(scheduler: object) -> tuple[tuple[Tier, ...], bool]:
    """(cache_to, tier_upgrade) of a scheduler; a scheduler that states neither gets ServerlessLLM's store."""
    return tuple(getattr(scheduler, "cache_to", SLLM_CACHE)), bool(getattr(scheduler, "tier_upgrade", True))


@dataclass(frozen=True)
class Wait:
    """No placement now; ask again when resources change, or at ``retry_at_s`` at the latest."""

    retry_at_s: float | None = None


Decision = Placement | Wait


class Scheduler(Protocol):
    """A pure policy: choose where a cold instance for ``request`` starts, from a read-only view."""

    def schedule(self, request: Request, view: ClusterView) -> Decision: ...


@dataclass(frozen=True)
class KeepAliveDecision:
    """How long an idle instance stays on its GPUs, and whether it is unloaded now and pre-warmed later."""

    keep_alive_s: float
    prewarm_s: float = 0.0


class KeepAlive(Protocol):
    """A keep-alive policy: learns from idle times per model, decides windows, and names the demotion
    tiers."""

    @property
    def demote_to(self) -> tuple[Tier, ...]:
        """Tiers an evicted instance's checkpoint is demoted to, in order (a subsequence of DRAM → SSD)."""
        ...

    def observe_idle(self, model: str, idle_s: float) -> None: ...

    def decide(self, model: str) -> KeepAliveDecision: ...


def startup_estimate_s(
    server: ServerView, model: ModelInfo, tier: Tier, now_s: float, gbps: float | None = None
) -> float:
    """ServerlessLLM's estimated startup on a server: q + n / b (paper §5.1; q: loading-queue wait,
    n: checkpoint bytes, b: bandwidth of the tier holding it), plus the model's build time and the runtime's
    start-up (getting a ready process, ``ModelInfo.startup_s``): q + ``load_slot_s`` + build. q is what the loads
    queued before it reserved with ``load_slot_s`` (the one formula both engines reserve with)."""
    bw = gbps if gbps is not None else server.tier_gbps(tier)
    return server.queue_s(now_s) + model.size_bytes / (bw * 1e9) + model.build_s + model.startup_s


def load_slot_s(model: ModelInfo, tier_gbps: float, loader_gbps: float | None = None, remote_gbps: float = 0.0,
                download_then_load: bool = False) -> float:
    """Seconds a load is expected to hold its server's loading slot, what it adds to q for the loads behind it:
    the runtime's start-up (``ModelInfo.startup_s``), then the bytes at the tier's bandwidth capped by the loader's
    (``loader_gbps``; KServe / Ray Serve download the whole checkpoint at ``remote_gbps`` first, then load it).
    The model build comes after the slot (``startup_estimate_s`` adds it)."""
    n = model.size_bytes
    if download_then_load and loader_gbps:
        return n / (remote_gbps * 1e9) + n / (loader_gbps * 1e9) + model.startup_s
    bw = tier_gbps if loader_gbps is None else min(tier_gbps, loader_gbps)
    return n / (bw * 1e9) + model.startup_s
