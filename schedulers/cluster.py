"""The cluster model's configuration: servers × GPUs, DRAM and SSD tiers, the link to the remote store."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from schedulers.errors import CalibrationError

GB = 1e9


def _positive(name: str, value: float, allowed: str = "> 0") -> None:
    if not value > 0:
        raise ValueError(f"cluster.{name}={value!r} is not allowed; it must be {allowed}")


@dataclass(frozen=True)
class ModelTimes:
    """Measured per-model times from a calibration file (or a cluster's ``model_times``): model build after
    loading, first-token (prefill base) time, and optionally a measured per-token profile that replaces the
    default roofline one (``schedulers.catalog.model_info``). ``engine_s``: what the calibrated engine's set-up
    (``kv_alloc`` + ``compile`` + ``graph_capture``) adds to every cold start whose runtime does not hold a prepared
    engine (``RuntimeTimes.prepared_engines``). ``startup_samples_s``: the fresh runtime's measured start-ups of
    this architecture (``experiment=sim_vs_real`` calibrates them from its real run); when given, each simulated
    fresh cold start draws its start-up from them (seeded), so the simulation has the measured spread, while
    ``startup_s`` stays what the policies estimate with."""

    build_s: float = 0.0
    first_token_s: float | None = None
    prefill_s_per_token: float | None = None
    decode_s_per_token: float | None = None
    startup_s: float = 0.0  # the fresh runtime's process start + imports for this architecture
    engine_s: float = 0.0  # the engine's set-up after the build (KV cache, compile, graph capture; 0 for eager)
    startup_samples_s: tuple[float, ...] = ()  # measured fresh start-ups to draw from (empty: always startup_s)

    def __post_init__(self) -> None:
        samples = tuple(float(s) for s in self.startup_samples_s)
        if any(not 0 <= s < math.inf for s in samples):
            raise ValueError(f"model_times.startup_samples_s={list(self.startup_samples_s)!r} is not allowed; "
                             "every sample must be a number of seconds ≥ 0")
        object.__setattr__(self, "startup_samples_s", samples)


RuntimeKind = Literal["fresh", "forkserver", "pool"]
RUNTIME_KINDS: tuple[RuntimeKind, ...] = ("fresh", "forkserver", "pool")


@dataclass(frozen=True)
class RuntimeTimes:
    """What getting a ready Python process costs a cold start (the ``conf/runtime`` option the servers run).

    ``fresh``: a new interpreter per cold start; it pays each model's ``ModelTimes.startup_s`` (process start +
    imports), so ``handoff_s`` stays 0. ``forkserver``: a zygote forks a child, ``handoff_s`` per cold start.
    ``pool``: ``pool_size`` ready workers per server; a cold start takes the earliest ready one (waiting if none
    is) plus ``handoff_s``, and a replacement starts once that cold start is loaded (``refill: after_load``, the
    real pool's default) or at once (``on_acquire``), ready ``worker_start_s`` later; a server starts its
    replacements one at a time (``runtimes/workerpool.py``). The defaults cost nothing (today's simulator).
    """

    kind: RuntimeKind = "fresh"
    handoff_s: float = 0.0
    pool_size: int = 0
    worker_start_s: float = 0.0
    refill: str = "after_load"  # pool: a replacement starts when the cold start it replaces is loaded | on_acquire
    prepared_engines: bool = False  # pool: workers hold each model's engine set up; a cold start swaps weights in

    def __post_init__(self) -> None:
        if self.refill not in ("after_load", "on_acquire"):
            raise ValueError(f"cluster.runtime.refill={self.refill!r} is not allowed; choose after_load or on_acquire")
        if self.kind not in RUNTIME_KINDS:
            raise ValueError(f"cluster.runtime.kind={self.kind!r} is not allowed; choose one of {list(RUNTIME_KINDS)}")
        for key in ("handoff_s", "worker_start_s"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf:
                raise ValueError(f"cluster.runtime.{key}={value!r} is not allowed; it must be a number ≥ 0")
        if not isinstance(self.pool_size, int) or isinstance(self.pool_size, bool) or self.pool_size < 0:
            raise ValueError(f"cluster.runtime.pool_size={self.pool_size!r} is not allowed; it must be an integer ≥ 0")
        if self.kind == "pool" and self.pool_size < 1:
            raise ValueError(f"cluster.runtime.pool_size={self.pool_size!r} is not allowed with kind=pool; "
                             "a pool keeps at least 1 ready worker per server")
        if self.kind != "pool" and (self.pool_size or self.worker_start_s):
            raise ValueError(f"cluster.runtime.pool_size={self.pool_size!r}, worker_start_s={self.worker_start_s!r} "
                             f"are not allowed with kind={self.kind}; they must be 0 (only kind=pool has workers)")
        if self.prepared_engines and self.kind != "pool":
            raise ValueError(f"cluster.runtime.prepared_engines=true is not allowed with kind={self.kind}; only a "
                             "pool's workers hold prepared engines")
        if self.kind == "fresh" and self.handoff_s:
            raise ValueError(f"cluster.runtime.handoff_s={self.handoff_s!r} is not allowed with kind=fresh; it must "
                             "be 0 (a fresh process's start-up is per model: model_times.<model>.startup_s)")

    @classmethod
    def of(cls, value: RuntimeTimes | Mapping[str, Any]) -> RuntimeTimes:
        """A ``RuntimeTimes`` from itself or a config mapping (``cluster.runtime: {kind: pool, ...}``)."""
        if isinstance(value, RuntimeTimes):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"cluster.runtime={value!r} is not allowed; it must be a mapping with keys "
                             f"{[f.name for f in fields(cls)]}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, value)) - allowed)
        if unknown:
            raise ValueError(f"cluster.runtime has unknown keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**{str(k): v for k, v in value.items()})


@dataclass(frozen=True)
class Cluster:
    """A homogeneous cluster: ``servers`` × ``gpus_per_server`` GPUs with their tiers and bandwidths.

    Bandwidths are in GB/s towards the GPUs (``dram_gbps``: pinned DRAM → GPU; ``ssd_gbps``: SSD → GPU through
    DRAM; ``remote_gbps``: each server's network link to the remote store). ``store_gbps`` caps the remote
    store
    for all servers together (None: no shared cap). ``load_slots`` is how many loads a server runs at once
    (1 = ServerlessLLM's sequential loading queue; > 1 = concurrent loads that share the tier bandwidth).
    ``gpu_hbm_gbps``/``gpu_tflops`` feed the default linear inference profile (``schedulers.catalog``);
    ``model_times`` (per zoo model name) replaces parts of it with measured times. ``runtime``: what getting a
    ready process costs each cold start (``RuntimeTimes``; default: nothing).
    """

    name: str = "cluster"
    servers: int = 4
    gpus_per_server: int = 4
    gpu_mem_gb: float = 48.0
    gpu_type: str = "A40"
    gpu_hbm_gbps: float = 696.0
    gpu_tflops: float = 149.7
    dram_gb: float = 512.0
    ssd_gb: float = 2000.0
    dram_gbps: float = 25.0
    ssd_gbps: float = 6.0
    remote_gbps: float = 1.25
    store_gbps: float | None = None
    load_slots: int = 1
    ssd_replicas: int = 1
    model_times: Mapping[str, ModelTimes] = field(default_factory=dict)
    runtime: RuntimeTimes = field(default_factory=RuntimeTimes)

    def __post_init__(self) -> None:
        for key in ("servers", "gpus_per_server", "load_slots"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"cluster.{key}={value!r} is not allowed; it must be an integer ≥ 1")
        for key in ("gpu_mem_gb", "gpu_hbm_gbps", "gpu_tflops", "dram_gbps", "ssd_gbps", "remote_gbps"):
            _positive(key, getattr(self, key))
        for key in ("dram_gb", "ssd_gb"):
            if getattr(self, key) < 0:
                raise ValueError(f"cluster.{key}={getattr(self, key)!r} is not allowed; it must be ≥ 0")
        if self.store_gbps is not None:
            _positive("store_gbps", self.store_gbps, "> 0 or null")
        if self.ssd_replicas < 0:
            raise ValueError(f"cluster.ssd_replicas={self.ssd_replicas!r} is not allowed; it must be ≥ 0")
        times = {
            str(k): v if isinstance(v, ModelTimes) else ModelTimes(**dict(v)) for k, v in dict(self.model_times).items()
        }
        object.__setattr__(self, "model_times", times)
        object.__setattr__(self, "runtime", RuntimeTimes.of(self.runtime))

    @property
    def gpu_mem_bytes(self) -> int:
        return int(self.gpu_mem_gb * GB)

    @property
    def dram_bytes(self) -> int:
        return int(self.dram_gb * GB)

    @property
    def ssd_bytes(self) -> int:
        return int(self.ssd_gb * GB)

    @property
    def num_gpus(self) -> int:
        return self.servers * self.gpus_per_server

    def times_for(self, model: str) -> ModelTimes:
        """Calibrated times for ``model`` (replica suffix ``#k`` ignored), or the defaults."""
        return self.model_times.get(model.split("#")[0], ModelTimes())

    def engine_s(self, model: str) -> float:
        """Seconds the engine's set-up adds to a cold start of ``model``: the calibrated ``engine_s``, or 0 when the
        runtime's workers hold prepared engines (the weights are copied into one, inside the build)."""
        return 0.0 if self.runtime.prepared_engines else self.times_for(model).engine_s

    def startup_s(self, model: str) -> float:
        """Seconds a cold start of ``model`` spends getting a ready process, besides waiting for a pool worker:
        the model's ``startup_s`` under ``fresh``, the runtime's ``handoff_s`` under ``forkserver`` and ``pool``."""
        if self.runtime.kind == "fresh":
            return self.times_for(model).startup_s
        return self.runtime.handoff_s

    def startup_samples_s(self, model: str) -> tuple[float, ...]:
        """Measured start-ups a simulated cold start of ``model`` draws from: the model's ``startup_samples_s``
        under ``fresh`` (empty otherwise, and when none were measured: then every cold start pays
        :meth:`startup_s`)."""
        return self.times_for(model).startup_samples_s if self.runtime.kind == "fresh" else ()


TIER_KEYS = {"dram": "dram_gbps", "ssd": "ssd_gbps", "remote": "remote_gbps"}


def cluster_from_calibration(doc: Mapping[str, Any], source: str, runtime_name: str = "fresh",
                             **overrides: Any) -> Cluster:
    """A ``Cluster`` from a parsed calibration document (schema in docs/serverless.md); ``overrides`` win.

    ``experiment=calibrate`` writes a tier it could not measure as ``{absent: true, reason: ...}`` (e.g. no
    remote store configured); such a tier must then be given as an override (``cluster.remote_gbps=1.25``),
    else the file is rejected naming the tier, the reason and both fixes. ``runtime_name`` picks the entry of the
    file's ``runtimes`` section whose start-up costs the cluster pays (a file written before runtimes were
    measured has none: ``fresh`` then costs nothing, any other name is refused).
    """
    tiers = doc.get("tiers")
    if not isinstance(tiers, Mapping):
        raise CalibrationError(f"{source}: no 'tiers' mapping; it needs tiers.dram/ssd/remote with bw_gbps")
    kwargs: dict[str, Any] = {}
    for tier, key in TIER_KEYS.items():
        if overrides.get(key) is not None:
            continue  # the command line fills (or replaces) this tier
        entry = tiers.get(tier)
        if not isinstance(entry, Mapping) or "bw_gbps" not in entry:
            why = f" (absent: {entry.get('reason', 'no reason given')})" if isinstance(entry, Mapping) else ""
            raise CalibrationError(
                f"{source}: tier {tier!r} is missing (or has no bw_gbps){why}; every one of "
                f"{sorted(TIER_KEYS)} needs 'bw_gbps' — re-run `experiment=calibrate` where that tier exists "
                f"(remote: set link_gbps=GB/s), add it by hand, or pass cluster.{key}=GB/s"
            )
        try:
            kwargs[key] = float(entry["bw_gbps"])
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: tiers.{tier}.bw_gbps={entry['bw_gbps']!r} is not a number") from exc
        if not kwargs[key] > 0:
            raise CalibrationError(f"{source}: tiers.{tier}.bw_gbps={kwargs[key]} must be > 0")
    gpu = doc.get("gpu", {}) or {}
    for src, dst in (
        ("type", "gpu_type"),
        ("mem_gb", "gpu_mem_gb"),
        ("hbm_gbps", "gpu_hbm_gbps"),
        ("tflops", "gpu_tflops"),
    ):
        if src in gpu:
            kwargs[dst] = gpu[src]
    models = doc.get("models", {}) or {}
    kwargs["model_times"] = {str(name): _model_times(source, str(name), m) for name, m in models.items()}
    runtime, startup = _runtime_entry(doc, source, str(runtime_name))
    kwargs["runtime"] = runtime
    for name, seconds in startup.items():
        times = kwargs["model_times"].get(name, ModelTimes())
        kwargs["model_times"][name] = replace(times, startup_s=seconds)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return Cluster(**kwargs)


def _seconds(source: str, key: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{source}: {key}={value!r} is not a number") from exc
    if not 0 <= seconds < math.inf:
        raise CalibrationError(f"{source}: {key}={value!r} must be a number ≥ 0")
    return seconds


def _runtime_entry(doc: Mapping[str, Any], source: str, name: str) -> tuple[RuntimeTimes, dict[str, float]]:
    """The ``runtimes.<name>`` entry of a calibration file: its ``RuntimeTimes`` and, for a ``fresh`` runtime, each
    model's start-up seconds (``startup_s``; other kinds pay ``handoff_s`` whatever the model)."""
    runtimes = doc.get("runtimes")
    if runtimes is None and name == "fresh":
        return RuntimeTimes(), {}  # a file from before runtimes were measured: start-up costs nothing
    if not isinstance(runtimes, Mapping) or name not in runtimes:
        have = sorted(map(str, runtimes)) if isinstance(runtimes, Mapping) else []
        raise CalibrationError(
            f"{source}: cluster.runtime_name={name!r} but the file's runtimes section has {have or 'no entries'}; "
            f"re-run `experiment=calibrate 'runtimes=[fresh,{name}]'`, add runtimes.{name} by hand, or pick one of "
            f"{have or ['fresh']}"
        )
    entry = runtimes[name]
    if not isinstance(entry, Mapping):
        raise CalibrationError(f"{source}: runtimes.{name} must be a mapping, got {entry!r}")
    if entry.get("absent"):
        raise CalibrationError(f"{source}: runtimes.{name} is absent ({entry.get('reason', 'no reason given')}); "
                               f"re-run `experiment=calibrate` where it works, or pick another cluster.runtime_name")
    kind = str(entry.get("kind", name))
    if kind not in RUNTIME_KINDS:
        raise CalibrationError(f"{source}: runtimes.{name}.kind={kind!r}; it must be one of {list(RUNTIME_KINDS)}")
    key = f"runtimes.{name}"
    if kind == "fresh":
        startup = entry.get("startup_s") or {}
        if not isinstance(startup, Mapping):
            raise CalibrationError(f"{source}: {key}.startup_s must map model names to seconds, got {startup!r}")
        missing = sorted(set(map(str, doc.get("models", {}) or {})) - set(map(str, startup)))
        if missing:
            raise CalibrationError(f"{source}: {key}.startup_s lacks {missing}, which the file's models section has; "
                                   f"add their start-up seconds or re-run `experiment=calibrate`")
        return RuntimeTimes(), {str(m): _seconds(source, f"{key}.startup_s.{m}", s) for m, s in startup.items()}
    handoff = _seconds(source, f"{key}.handoff_s", entry.get("handoff_s", 0.0))
    if kind == "forkserver":
        return RuntimeTimes("forkserver", handoff_s=handoff), {}
    for needed in ("size", "worker_start_s"):
        if entry.get(needed) is None:
            raise CalibrationError(f"{source}: {key} (kind pool) has no {needed}; re-run `experiment=calibrate` with "
                                   f"the pool runtime or add it by hand")
    size = entry["size"]
    if isinstance(size, bool) or not isinstance(size, int | float) or size != int(size) or int(size) < 1:
        raise CalibrationError(f"{source}: {key}.size={size!r} must be an integer ≥ 1")
    worker = _seconds(source, f"{key}.worker_start_s", entry["worker_start_s"])
    prepared = entry.get("prepared_engines", False)
    if not isinstance(prepared, bool):
        raise CalibrationError(f"{source}: {key}.prepared_engines={prepared!r} must be true or false")
    return RuntimeTimes("pool", handoff_s=handoff, pool_size=int(size), worker_start_s=worker,
                        prepared_engines=prepared), {}


def _model_times(source: str, name: str, entry: Any) -> ModelTimes:
    """One ``models.<name>`` entry of a calibration file (unknown keys, e.g. ``bytes``, are ignored)."""
    if not isinstance(entry, Mapping):
        raise CalibrationError(f"{source}: models.{name} must be a mapping, got {entry!r}")
    values: dict[str, Any] = {}
    for key in ("build_s", "first_token_s", "prefill_s_per_token", "decode_s_per_token", "engine_s"):
        value = entry.get(key)
        if value is None:
            continue
        try:
            values[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: models.{name}.{key}={value!r} is not a number") from exc
        if values[key] < 0:
            raise CalibrationError(f"{source}: models.{name}.{key}={value!r} must be ≥ 0")
    return ModelTimes(**values)
