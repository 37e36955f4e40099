"""ServerlessLLM's scheduler as released (v0.8 code): local copies only, PCIe fixed at 25 GB/s, a=0.01,
b=0.1."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.serverlessllm import ServerlessLLMScheduler


@dataclass(frozen=True)
class ServerlessLLMReleasedScheduler(ServerlessLLMScheduler):
    """The released code's simplifications (ANCHORS.md §1): servers without a local copy are skipped (falling
    back
    to the least-loaded server from remote when no server has one), every local load is estimated at a
    hard-coded
    PCIe 25 GB/s, and a migration costs 0.01 s per token + 0.1 s. Keep-alive is fixed (pair it with
    ``fixed``)."""

    local_only: bool = True
    local_gbps: float | None = 25.0
    resume_s_per_token: float | None = 0.01
    resume_base_s: float | None = 0.1
