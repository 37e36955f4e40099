"""A block server: a contiguous span of decoder layers, a KV cache per session and a slot budget (Sun et al. §III)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.zoo import ModelSpec
from placement.base import GB, BlockModel
from placement.real.blocks import SpanRunner, build_full

DTYPE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}


class ServerMemoryError(ValueError):
    """A server's memory budget cannot hold its blocks plus the cache slots it was given."""


class SessionTooLongError(ValueError):
    """A session sent more tokens than the l^I + l_max its cache slots were counted for."""


def real_block_model(spec: ModelSpec, dtype: str = "fp32") -> BlockModel:
    """s_m and s_c of the real chain: weights at the compute dtype, no metadata overhead, no reserve.

    s_m = parameters of one decoder layer × dtype bytes; s_c = 2·kv_dim·tokens·dtype bytes (§III, as
    ``placement.base.BlockModel``), so slots are counted exactly as the placement model counts them.
    """
    if dtype not in DTYPE_BITS:
        raise ValueError(f"dtype={dtype!r} is invalid for the chain; allowed: {sorted(DTYPE_BITS)}")
    base = BlockModel.from_zoo(spec, weight_bits=DTYPE_BITS[dtype])
    return BlockModel(base.name, base.num_blocks, base.block_params, base.d_model, weight_bits=DTYPE_BITS[dtype],
                      metadata_overhead=0.0, cache_dtype_bytes=DTYPE_BITS[dtype] // 8, reserve_gib=0.0,
                      kv_dim=base.kv_dim)


@dataclass(frozen=True)
class ServerConfig:
    """One server: its span, slot budget (block-sessions), memory budget and compute budget."""

    name: str
    start: int
    count: int
    cache_slots: int
    mem_gb: float
    session_tokens: int  # l^I + l_max: the tokens one slot holds
    threads: int | None = None  # torch intra-op threads (None: leave as is, e.g. several servers in one process)
    slowdown: float = 1.0  # emulated slower device: after computing for t s, stay busy (slowdown − 1)·t more
    seed: int = 0
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.count < 1 or self.start < 0:
            raise ValueError(f"{self.name}: start={self.start}, count={self.count} is invalid; allowed: "
                             "start >= 0, count >= 1")
        if self.cache_slots < 0 or self.session_tokens < 1:
            raise ValueError(f"{self.name}: cache_slots={self.cache_slots}, session_tokens={self.session_tokens}"
                             " is invalid; allowed: cache_slots >= 0, session_tokens >= 1")
        if self.slowdown < 1:
            raise ValueError(f"{self.name}: slowdown={self.slowdown} is invalid; allowed: >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"{self.name}: threads={self.threads} is invalid; allowed: null or >= 1")


class BlockServer:
    """Hidden states in, hidden states out, for blocks ``first .. last-1`` of its span.

    A session reserves k = last − first slots (one per block it runs) for its lifetime; when fewer are free the
    server refuses (``open_session`` returns False) or, with ``wait_s`` > 0, waits for releases.
    """

    def __init__(self, spec: ModelSpec, config: ServerConfig) -> None:
        self.config = config
        self.model = real_block_model(spec, config.dtype)
        need_gb = self.model.block_gb * config.count + self.model.cache_gb(config.session_tokens) * config.cache_slots
        if need_gb > config.mem_gb * (1 + 1e-9):
            slot_b = self.model.cache_gb(config.session_tokens) * GB
            raise ServerMemoryError(f"{config.name}: {config.count} block(s) × {self.model.block_gb * GB:.0f} B + "
                                    f"{config.cache_slots} slot(s) × {slot_b:.0f} B = {need_gb * GB:.0f} B exceed "
                                    f"mem_gb={config.mem_gb} "
                                    f"({config.mem_gb * GB:.0f} B); fix: fewer blocks or slots, or more memory")
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        full = build_full(spec, config.seed, config.dtype)
        self.runner = SpanRunner(full, config.start, config.count)
        self._lock = threading.Condition()
        self._free = config.cache_slots
        self._sessions: dict[str, dict[str, Any]] = {}
        self.refusals = 0

    def info(self) -> dict[str, Any]:
        """Span, slots (total and free) and open sessions, for the client's routing view."""
        with self._lock:
            return {"name": self.config.name, "start": self.config.start, "count": self.config.count,
                    "cache_slots": self.config.cache_slots, "free_slots": self._free,
                    "sessions": len(self._sessions), "refusals": self.refusals}

    def open_session(self, sid: str, first: int, last: int, wait_s: float = 0.0) -> bool:
        """Reserve last − first slots for session ``sid``; False (a refusal) when they are not free in time."""
        end = self.config.start + self.config.count
        if not (self.config.start <= first < last <= end):
            raise ValueError(f"{self.config.name}: blocks [{first}, {last}) outside span [{self.config.start}, {end})")
        k = last - first
        deadline = time.monotonic() + wait_s
        with self._lock:
            if sid in self._sessions:
                raise ValueError(f"{self.config.name}: session {sid!r} is already open")
            while self._free < k:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.refusals += 1
                    return False
                self._lock.wait(left)
            self._free -= k
            self._sessions[sid] = {"first": first, "last": last, "cache": self.runner.new_cache(), "tokens": 0}
        return True

    def forward(self, sid: str, hidden: Any, positions: Any) -> tuple[Any, float]:
        """Run the session's blocks on ``hidden``; returns the output and the busy seconds (compute + slowdown).

        Tensors in, tensor out; numpy arrays in (from a worker pipe), a numpy array out.
        """
        as_numpy = isinstance(hidden, np.ndarray)
        if as_numpy:  # arrays from a pipe may be read-only: copy into tensors torch may own
            hidden, positions = torch.from_numpy(np.array(hidden)), torch.from_numpy(np.array(positions))
        with self._lock:
            s = self._sessions[sid]
            s["tokens"] += hidden.shape[1]
            if s["tokens"] > self.config.session_tokens:
                raise SessionTooLongError(f"{self.config.name}: session {sid!r} sent {s['tokens']} tokens; its slots "
                                          f"hold {self.config.session_tokens} (l^I + l_max)")
        t0 = time.perf_counter()
        out = self.runner.forward(s["cache"], hidden, positions, s["first"], s["last"])
        compute_s = time.perf_counter() - t0
        if self.config.slowdown > 1:
            time.sleep((self.config.slowdown - 1) * compute_s)
        return (out.numpy() if as_numpy else out), time.perf_counter() - t0

    def kv_bytes(self, sid: str) -> int:
        """Bytes the session's KV cache holds now (never more than its reserved slots × s_c)."""
        cache = self._sessions[sid]["cache"]
        total = 0
        for layer in getattr(cache, "layers", []):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total

    def close_session(self, sid: str) -> None:
        """Free the session's cache and slots (unknown ids are ignored: a retry may close twice)."""
        with self._lock:
            s = self._sessions.pop(sid, None)
            if s is not None:
                self._free += s["last"] - s["first"]
                self._lock.notify_all()

    def ping(self) -> bool:
        return True
