"""ServerlessLLM's scheduler (paper version): least estimated startup q + n/b, with live migration chosen by
DP."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import (
    ClusterView,
    Decision,
    Migration,
    ModelInfo,
    Placement,
    Request,
    ServerView,
    StorageScheduler,
    Tier,
    Wait,
    startup_estimate_s,
)
from schedulers.knapsack import min_cost_cover


@dataclass(frozen=True)
class ServerlessLLMScheduler(StorageScheduler):
    """Startup-time-optimized placement (Fu et al., OSDI'24, §5).

    For every server: startup = q + n / b (q: its loading-queue wait; n: checkpoint bytes; b: bandwidth of the
    fastest tier holding the checkpoint there: DRAM, SSD or the remote link). When a server lacks free GPUs,
    consider live-migrating running instances away: each costs its destination's startup plus re-prefilling
    its
    tokens (a · tokens + b; by default a is the model's prefill time per token and b its base time); the set
    to move
    is the cheapest that frees enough GPUs (0/1 knapsack). The option with the least estimate wins.
    """

    migration: bool = True
    resume_s_per_token: float | None = None
    resume_base_s: float | None = None
    local_only: bool = False
    local_gbps: float | None = None

    def estimate(self, server: ServerView, info: ModelInfo, now_s: float) -> tuple[float, Tier]:
        """Estimated startup of ``info`` on ``server`` and the tier it would load from."""
        tier = server.best_tier(info.name)
        gbps = self.local_gbps if self.local_gbps is not None and tier != "remote" else None
        return startup_estimate_s(server, info, tier, now_s, gbps), tier

    def schedule(self, request: Request, view: ClusterView) -> Decision:
        info, now = view.models[request.model], view.now_s
        best: tuple[float, int, Tier] | None = None
        busy: list[tuple[float, ServerView, Tier]] = []
        plan_best: Placement | None = None
        size, build, local = info.size_bytes, info.build_s, self.local_gbps
        startup = info.startup_s
        for server in view.servers:  # q + n / b inlined: this loop runs for every cold start on every server
            if info.name in server.dram_models:
                tier: Tier = "dram"
                bw = server.dram_gbps if local is None else local
            elif info.name in server.ssd_models:
                tier, bw = "ssd", server.ssd_gbps if local is None else local
            elif self.local_only:
                continue
            else:
                tier, bw = "remote", server.remote_gbps
            q = server.queue_free_at_s - now
            est = (q if q > 0 else 0.0) + size / (bw * 1e9) + build + startup
            if server.free_gpus + server.idle_gpus >= info.gpus:
                if best is None or (est, server.server_id) < best[:2]:
                    best = (est, server.server_id, tier)
            elif self.migration:
                busy.append((est, server, tier))
        # Migration only pays where the plain estimate already beats the best free option (its cost is > 0).
        for est, server, tier in sorted(busy, key=lambda x: (x[0], x[1].server_id)):
            if best is not None and est >= best[0]:
                break
            plan = self._migrations(server, info, view)
            if plan is not None and (best is None or (est + plan[0], server.server_id) < best[:2]):
                best = (est + plan[0], server.server_id, tier)
                plan_best = self.place(server.server_id, tier, est + plan[0], migrations=plan[1])
        if best is None and self.local_only:
            return self.fallback(request, view)
        if best is None:
            return Wait()
        return plan_best if plan_best is not None else self.place(best[1], best[2], best[0])

    def fallback(self, request: Request, view: ClusterView) -> Decision:
        """No local copy anywhere (released code): the server with the most available GPUs, from remote."""
        info = view.models[request.model]
        ok = [s for s in view.servers if s.available_gpus >= info.gpus]
        if not ok:
            return Wait()
        s = max(ok, key=lambda s: (s.available_gpus, -s.server_id))
        return self.place(s.server_id, "remote", startup_estimate_s(s, info, "remote", view.now_s))

    def resume_s(self, info: ModelInfo, tokens: int) -> float:
        """Time to re-prefill ``tokens`` at the destination: a · tokens + b."""
        a = self.resume_s_per_token if self.resume_s_per_token is not None else info.prefill_s_per_token
        b = self.resume_base_s if self.resume_base_s is not None else info.prefill_base_s
        return a * tokens + b

    def _migrations(
        self, server: ServerView, info: ModelInfo, view: ClusterView
    ) -> tuple[float, tuple[Migration, ...]] | None:
        """The cheapest set of running instances to move off ``server`` (knapsack), with its estimated
        time."""
        need = info.gpus - server.available_gpus
        room = {s.server_id: s.available_gpus for s in view.servers if s.server_id != server.server_id}
        items: list[tuple[int, float]] = []
        targets: list[tuple[int, int]] = []
        best_dst: dict[str, tuple[float, int] | None] = {}
        for inst in server.instances:
            if not inst.busy or inst.migrating or inst.model == info.name:
                continue
            other = view.models[inst.model]
            if inst.model not in best_dst:
                dests = [
                    (self.estimate(s, other, view.now_s)[0], s.server_id)
                    for s in view.servers
                    if room.get(s.server_id, 0) >= other.gpus
                ]
                best_dst[inst.model] = min(dests) if dests else None
            found = best_dst[inst.model]
            if found is None:
                continue
            items.append((inst.gpus, found[0] + self.resume_s(other, inst.tokens_done(view.now_s))))
            targets.append((inst.instance_id, found[1]))
        chosen = min_cost_cover(items, need)
        if chosen is None or not chosen[1]:
            return None
        migs: list[Migration] = []
        for idx in chosen[1]:
            (iid, dst), (gpus, cost) = targets[idx], items[idx]
            if room[dst] < gpus:  # two picks wanted the same destination: the next one with room
                alts = [sid for sid, free in sorted(room.items()) if free >= gpus]
                if not alts:
                    return None
                dst = alts[0]
            room[dst] -= gpus
            migs.append(Migration(iid, dst, cost))
        return max(m.estimated_s for m in migs), tuple(migs)
