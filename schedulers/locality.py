"""Locality-first placement: wait for a server holding the checkpoint in its fastest tier."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import ClusterView, Decision, Request, ServerView, StorageScheduler, Wait, startup_estimate_s

TIER_RANK = {"dram": 0, "ssd": 1, "remote": 2}


def best_locality(view: ClusterView, model: str) -> list[ServerView]:
    """The servers whose fastest copy of ``model`` is in the best tier found anywhere in the cluster."""
    rank = min(TIER_RANK[s.best_tier(model)] for s in view.servers)
    return [s for s in view.servers if TIER_RANK[s.best_tier(model)] == rank]


@dataclass(frozen=True)
class LocalityScheduler(StorageScheduler):
    """Only servers with the best locality are eligible; if none has GPUs available, the request waits."""

    def schedule(self, request: Request, view: ClusterView) -> Decision:
        info = view.models[request.model]
        ok = [s for s in best_locality(view, info.name) if s.available_gpus >= info.gpus]
        if not ok:
            return Wait()
        s = min(ok, key=lambda s: (s.queue_s(view.now_s), -s.available_gpus, s.server_id))
        tier = s.best_tier(info.name)
        return self.place(s.server_id, tier, startup_estimate_s(s, info, tier, view.now_s))
