"""The cluster model's configuration: servers × GPUs, DRAM and SSD tiers, the link to the remote store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schedulers.errors import CalibrationError

GB = 1e9


def _positive(name: str, value: float, allowed: str = "> 0") -> None:
    if not value > 0:
        raise ValueError(f"cluster.{name}={value!r} is not allowed; it must be {allowed}")


@dataclass(frozen=True)
class ModelTimes:
    """Measured per-model times from a calibration file (or a cluster's ``model_times``): model build after
    loading, first-token (prefill base) time, and optionally a measured per-token profile that replaces the
    default roofline one (``schedulers.catalog.model_info``)."""

    build_s: float = 0.0
    first_token_s: float | None = None
    prefill_s_per_token: float | None = None
    decode_s_per_token: float | None = None


@dataclass(frozen=True)
class Cluster:
    """A homogeneous cluster: ``servers`` × ``gpus_per_server`` GPUs with their tiers and bandwidths.

    Bandwidths are in GB/s towards the GPUs (``dram_gbps``: pinned DRAM → GPU; ``ssd_gbps``: SSD → GPU through
    DRAM; ``remote_gbps``: each server's network link to the remote store). ``store_gbps`` caps the remote
    store
    for all servers together (None: no shared cap). ``load_slots`` is how many loads a server runs at once
    (1 = ServerlessLLM's sequential loading queue; > 1 = concurrent loads that share the tier bandwidth).
    ``gpu_hbm_gbps``/``gpu_tflops`` feed the default linear inference profile (``schedulers.catalog``);
    ``model_times`` (per zoo model name) replaces parts of it with measured times.
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


TIER_KEYS = {"dram": "dram_gbps", "ssd": "ssd_gbps", "remote": "remote_gbps"}


def cluster_from_calibration(doc: Mapping[str, Any], source: str, **overrides: Any) -> Cluster:
    """A ``Cluster`` from a parsed calibration document (schema in docs/serverless.md); ``overrides`` win.

    ``experiment=calibrate`` writes a tier it could not measure as ``{absent: true, reason: ...}`` (e.g. no
    remote store configured); such a tier must then be given as an override (``cluster.remote_gbps=1.25``),
    else the file is rejected naming the tier, the reason and both fixes.
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
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return Cluster(**kwargs)


def _model_times(source: str, name: str, entry: Any) -> ModelTimes:
    """One ``models.<name>`` entry of a calibration file (unknown keys, e.g. ``bytes``, are ignored)."""
    if not isinstance(entry, Mapping):
        raise CalibrationError(f"{source}: models.{name} must be a mapping, got {entry!r}")
    values: dict[str, float] = {}
    for key in ("build_s", "first_token_s", "prefill_s_per_token", "decode_s_per_token"):
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
