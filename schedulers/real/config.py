"""What the real controller is configured with: the lifecycle's knobs (shared with the simulator) and its own, for
the instance processes it starts and calls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schedulers.lifecycle import LifecycleConfig


@dataclass(frozen=True)
class ProcessConfig:
    """How instance processes are started and called: RPC timeout, decode chunk, retries after a process died,
    load failures before a model is given up, each slot's thread and memory budgets, device and dtype."""

    call_timeout_s: float = 120.0
    decode_chunk: int = 4
    max_request_retries: int = 1
    max_load_failures: int = 2
    slot_threads: int = 1
    slot_memory_bytes: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    engine: Mapping[str, Any] | None = None  # a conf/engine config each instance sets up after the build (None: none)
    engine_prompt_tokens: int = 16  # the prompt length an engine is prepared (compiled, captured) for at a cold start

    def __post_init__(self) -> None:
        if not self.call_timeout_s > 0:
            raise ValueError(f"real.call_timeout_s={self.call_timeout_s!r}; it must be > 0")
        if self.decode_chunk < 1:
            raise ValueError(f"real.decode_chunk={self.decode_chunk!r}; it must be ≥ 1")
        if self.engine_prompt_tokens < 1:
            raise ValueError(f"real.engine_prompt_tokens={self.engine_prompt_tokens!r}; it must be ≥ 1")


@dataclass(frozen=True)
class RealConfig:
    """The real controller's option groups: ``lifecycle`` (the same knobs the simulator has: ``real.timeout_s``,
    ``real.migration_stop_tokens``, ...), ``process`` (the instance processes), and ``drain_s``: after the last
    request, how long keep-alive windows may still run out (the simulator runs them all)."""

    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    drain_s: float = 30.0

    def __post_init__(self) -> None:
        if self.drain_s < 0:
            raise ValueError(f"real.drain_s={self.drain_s!r}; it must be ≥ 0")
