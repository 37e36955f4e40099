"""Fixed keep-alive: every idle instance stays on its GPUs for the same window (AWS Lambda ~10 min, Azure ~20
min)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schedulers.base import KeepAliveDecision, Tier, check_cache_to


def check_demote_to(demote_to: Sequence[str]) -> tuple[Tier, ...]:
    """Validate a demotion chain: a subsequence of GPU → DRAM → SSD (the same rule as a policy's ``cache_to``)."""
    return check_cache_to(demote_to, key="keepalive.demote_to")


@dataclass(frozen=True)
class FixedKeepAlive:
    """Keep idle instances ``keep_alive_s`` seconds, then unload them and demote the checkpoint along
    ``demote_to``."""

    keep_alive_s: float = 60.0
    demote_to: tuple[Tier, ...] = ("dram", "ssd")

    def __post_init__(self) -> None:
        if self.keep_alive_s < 0:
            raise ValueError(f"keepalive.keep_alive_s={self.keep_alive_s!r} is not allowed; it must be ≥ 0")
        object.__setattr__(self, "demote_to", check_demote_to(self.demote_to))

    def observe_idle(self, model: str, idle_s: float) -> None:
        """A fixed window learns nothing."""

    def decide(self, model: str) -> KeepAliveDecision:
        return KeepAliveDecision(self.keep_alive_s)
