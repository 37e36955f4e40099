"""0/1 knapsack over GPUs freed: the cheapest set of running instances to move so that enough GPUs come
free."""

from __future__ import annotations

import math
from collections.abc import Sequence


def min_cost_cover(items: Sequence[tuple[int, float]], need: int) -> tuple[float, list[int]] | None:
    """Choose items (gpus_i, cost_i) with Σ gpus ≥ ``need`` at least total cost; None when impossible.

    Dynamic programming over freed GPUs capped at ``need`` (ServerlessLLM §5.2 picks the migrations this way).
    """
    if need <= 0:
        return 0.0, []
    best: list[float] = [0.0] + [math.inf] * need
    choice: list[list[int]] = [[] for _ in range(need + 1)]
    for idx, (gpus, cost) in enumerate(items):
        for have in range(need, -1, -1):
            if best[have] == math.inf:
                continue
            to = min(need, have + gpus)
            if best[have] + cost < best[to]:
                best[to] = best[have] + cost
                choice[to] = [*choice[have], idx]
    return None if best[need] == math.inf else (best[need], choice[need])
