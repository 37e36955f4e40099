"""The "Serverless" baseline: availability-driven placement that ignores where checkpoints sit."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import ClusterView, Decision, Request, StorageScheduler, Wait, startup_estimate_s


@dataclass(frozen=True)
class ServerlessScheduler(StorageScheduler):
    """Place on the server with the most available GPUs (ties: lowest id); load from whatever tier it has
    there."""

    def schedule(self, request: Request, view: ClusterView) -> Decision:
        info = view.models[request.model]
        ok = [s for s in view.servers if s.available_gpus >= info.gpus]
        if not ok:
            return Wait()
        s = max(ok, key=lambda s: (s.available_gpus, -s.server_id))
        tier = s.best_tier(info.name)
        return self.place(s.server_id, tier, startup_estimate_s(s, info, tier, view.now_s))
