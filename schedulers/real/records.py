"""What the real controller records and is configured with: its knobs and one live record per request."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RealConfig:
    """Controller knobs: timeouts (wall seconds), decode chunk, migration stop rule, retries, load failures."""

    timeout_s: float = 120.0
    call_timeout_s: float = 120.0
    decode_chunk: int = 4
    migration_stop_tokens: int = 4
    max_request_retries: int = 1
    max_load_failures: int = 2
    slot_threads: int = 1
    slot_memory_bytes: int | None = None
    drain_s: float = 30.0  # after the last request, keep running keep-alive expiries this long (as the simulator)
    device: str = "cpu"
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        for key in ("timeout_s", "call_timeout_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"real.{key}={getattr(self, key)!r}; it must be > 0")
        if self.decode_chunk < 1:
            raise ValueError(f"real.decode_chunk={self.decode_chunk!r}; it must be ≥ 1")


@dataclass
class Req:
    """A request's live record (becomes one row of requests.parquet)."""

    rid: int
    model: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    server: int = -1
    tier: str = ""
    placed_s: float = math.nan
    load_start_s: float = math.nan
    load_s: float = math.nan
    first_token_s: float = math.nan
    done_s: float = math.nan
    cold_start: bool = False
    migrated: int = 0
    preempted: int = 0
    retries: int = 0
    state: str = "new"  # new → waiting → assigned → running → done | failed | timed_out
    error: str = ""
    max_gap_s: float = math.nan
    serve_start_s: float = math.nan
    prefill_s: float = math.nan
    tokens: list[int] = field(default_factory=list)
