"""The "Shepherd*" baseline: locality-first placement that preempts running inferences to get the GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import ClusterView, Decision, Request, StorageScheduler, Wait, startup_estimate_s
from schedulers.locality import best_locality


@dataclass(frozen=True)
class ShepherdScheduler(StorageScheduler):
    """Among best-locality servers, use one with GPUs available; else preempt the running instances with the
    fewest tokens done on the best-locality server that can free enough (their requests restart elsewhere)."""

    def schedule(self, request: Request, view: ClusterView) -> Decision:
        info = view.models[request.model]
        servers = best_locality(view, info.name)
        ok = [s for s in servers if s.available_gpus >= info.gpus]
        if ok:
            s = min(ok, key=lambda s: (s.queue_s(view.now_s), -s.available_gpus, s.server_id))
            tier = s.best_tier(info.name)
            return self.place(s.server_id, tier, startup_estimate_s(s, info, tier, view.now_s))
        for s in sorted(servers, key=lambda s: (s.queue_s(view.now_s), s.server_id)):
            victims = sorted(
                (i for i in s.instances if i.busy and not i.migrating and i.model != info.name),
                key=lambda i: (i.tokens_done(view.now_s), i.instance_id),
            )
            need, chosen = info.gpus - s.available_gpus, []
            for v in victims:
                if need <= 0:
                    break
                chosen.append(v.instance_id)
                need -= v.gpus
            if need <= 0:
                tier = s.best_tier(info.name)
                est = startup_estimate_s(s, info, tier, view.now_s)
                return self.place(s.server_id, tier, est, preemptions=tuple(chosen))
        return Wait()
