"""Ray Serve's queue-length autoscaler as a placement policy (30 s upscale delay; downscale is keep-alive 600
s)."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import ClusterView, Decision, Placement, Request, Tier, Wait, check_cache_to

# torch.load effective speed: ServerlessLLM loads 6–8.2× faster than torch.load on ~12 GB/s NVMe RAID0
# (ANCHORS.md §1), i.e. torch.load reaches about 1.5–2 GB/s.
TORCH_LOAD_GBPS = 1.6


@dataclass(frozen=True)
class RayServeScheduler:
    """A model with replicas gets a new one only after requests have queued for ``upscale_delay_s`` (Ray Serve
    default 30 s); a model with none scales up at once. New replicas download the checkpoint over the link and
    load it at torch.load speed, or read it from the local SSD cache when ``ssd_cache`` holds it."""

    upscale_delay_s: float = 30.0
    ssd_cache: bool = False
    torch_load_gbps: float = TORCH_LOAD_GBPS
    cache_to: tuple[Tier, ...] | None = None  # None: [ssd] with ssd_cache, else nothing
    tier_upgrade: bool = False

    def __post_init__(self) -> None:
        default: tuple[Tier, ...] = ("ssd",) if self.ssd_cache else ()
        object.__setattr__(self, "cache_to", check_cache_to(default if self.cache_to is None else self.cache_to))
        if self.upscale_delay_s < 0:
            raise ValueError(f"scheduler.upscale_delay_s={self.upscale_delay_s!r}; it must be ≥ 0")
        if not self.torch_load_gbps > 0:
            raise ValueError(f"scheduler.torch_load_gbps={self.torch_load_gbps!r}; it must be > 0")

    def schedule(self, request: Request, view: ClusterView) -> Decision:
        info = view.models[request.model]
        oldest = min(request.arrival_s, view.waiting.get(info.name, (0, request.arrival_s))[1])
        if view.instances_per_model.get(info.name, 0) > 0 and view.now_s - oldest < self.upscale_delay_s:
            return Wait(retry_at_s=oldest + self.upscale_delay_s)
        ok = [s for s in view.servers if s.available_gpus >= info.gpus]
        if not ok:
            return Wait()
        s = max(ok, key=lambda s: (s.available_gpus, -s.server_id))
        cache = self.cache_to or ()
        if self.ssd_cache and info.name in s.ssd_models:
            return Placement(s.server_id, "ssd", loader_gbps=self.torch_load_gbps, cache_to=cache,
                             tier_upgrade=self.tier_upgrade)
        return Placement(s.server_id, "remote", loader_gbps=self.torch_load_gbps, download_then_load=True,
                         cache_to=cache, tier_upgrade=self.tier_upgrade)
