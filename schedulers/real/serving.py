"""Serving one request on a live instance, token by token, and handing it over by live migration.

Live migration (ServerlessLLM §5.3), for real: the destination instance is already loaded; it re-prefills the
tokens so far (``adopt``) while the source keeps decoding; rounds repeat until a round produced fewer than
``stop_tokens`` new tokens; then the source stops, the destination adopts the last few and resumes decoding.
The user sees one token stream. ``restart`` instead stops the source at once and re-prefills everything (the
baseline a migration is compared with).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.executors.workers import WorkerHandle


@dataclass
class Stream:
    """A request's tokens and when each arrived (controller wall clock, ``time.time``)."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    rounds: int = 0
    migrated: int = 0

    def extend(self, out: dict[str, Any], call_start_s: float) -> int:
        self.tokens.extend(out["tokens"])
        self.times_s.extend(call_start_s + dt for dt in out["offsets_s"])
        return len(out["tokens"])

    def max_gap_s(self) -> float:
        """The largest pause between consecutive tokens (what a migration costs the user)."""
        gaps = [b - a for a, b in zip(self.times_s, self.times_s[1:], strict=False)]
        return max(gaps, default=0.0)


def begin(handle: WorkerHandle, rid: int, stream: Stream, timeout_s: float) -> None:
    t0 = time.time()
    stream.extend(handle.call("begin", rid, stream.prompt, timeout_s=timeout_s), t0)


def decode(handle: WorkerHandle, rid: int, stream: Stream, n: int, timeout_s: float) -> None:
    t0 = time.time()
    stream.extend(handle.call("step", rid, n, timeout_s=timeout_s), t0)


def serve(handle_of: Callable[[], WorkerHandle], rid: int, stream: Stream, output_tokens: int, chunk: int,
          timeout_s: float, migration_target: Callable[[], WorkerHandle | None], stop_tokens: int,
          on_migrated: Callable[[], None] = lambda: None) -> WorkerHandle:
    """Decode until ``output_tokens``, in chunks; between chunks, migrate if a loaded destination is offered.
    Returns the handle that finished the request."""
    handle = handle_of()
    if not stream.tokens:
        begin(handle, rid, stream, timeout_s)
    while len(stream.tokens) < output_tokens:
        dst = migration_target()
        if dst is not None:
            live_migrate(handle, dst, rid, stream, output_tokens, chunk, stop_tokens, timeout_s)
            handle = dst
            on_migrated()
            continue
        decode(handle, rid, stream, min(chunk, output_tokens - len(stream.tokens)), timeout_s)
    return handle


def live_migrate(src: WorkerHandle, dst: WorkerHandle, rid: int, stream: Stream, output_tokens: int,
                 chunk: int, stop_tokens: int, timeout_s: float, max_rounds: int = 8) -> None:
    """Move request ``rid`` from ``src`` to ``dst`` in rounds; ``stream`` keeps growing throughout."""
    for _ in range(max_rounds):
        snapshot = stream.prompt + stream.tokens
        fut = dst.submit("adopt", rid, snapshot)
        before = len(stream.tokens)
        while not fut.done() and len(stream.tokens) < output_tokens:
            decode(src, rid, stream, min(chunk, output_tokens - len(stream.tokens)), timeout_s)
        fut.result(timeout=timeout_s)
        stream.rounds += 1
        if len(stream.tokens) - before < stop_tokens or len(stream.tokens) >= output_tokens:
            break
    dst.call("adopt", rid, stream.prompt + stream.tokens, timeout_s=timeout_s)  # the last few, source stopped
    src.call("finish", rid, timeout_s=timeout_s)
    stream.migrated += 1


def restart(src: WorkerHandle, dst: WorkerHandle, rid: int, stream: Stream, timeout_s: float) -> None:
    """Baseline: stop the source now; the destination re-prefills everything before the next token."""
    src.call("finish", rid, timeout_s=timeout_s)
    dst.call("adopt", rid, stream.prompt + stream.tokens, timeout_s=timeout_s)
    stream.migrated += 1
