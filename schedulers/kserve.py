"""KServe (Knative) as a placement policy: scale to zero; every cold start downloads, then loads with
torch.load."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import ClusterView, Decision, Placement, Request, Tier, Wait, check_cache_to
from schedulers.ray_serve import TORCH_LOAD_GBPS


@dataclass(frozen=True)
class KServeScheduler:
    """Place on the server with the most available GPUs; download the whole checkpoint over the remote link
    (10 Gbps in ServerlessLLM's testbed), then load it at torch.load speed. Pair with a short ``fixed``
    keep-alive
    and no demotion (``demote_to: []``) for scale-to-zero."""

    torch_load_gbps: float = TORCH_LOAD_GBPS
    cache_to: tuple[Tier, ...] = ()
    tier_upgrade: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_to", check_cache_to(self.cache_to))
        if not self.torch_load_gbps > 0:
            raise ValueError(f"scheduler.torch_load_gbps={self.torch_load_gbps!r}; it must be > 0")

    def schedule(self, request: Request, view: ClusterView) -> Decision:
        info = view.models[request.model]
        ok = [s for s in view.servers if s.available_gpus >= info.gpus]
        if not ok:
            return Wait()
        s = max(ok, key=lambda s: (s.available_gpus, -s.server_id))
        return Placement(
            s.server_id, "remote", loader_gbps=self.torch_load_gbps, download_then_load=True,
            cache_to=self.cache_to, tier_upgrade=self.tier_upgrade,
        )
