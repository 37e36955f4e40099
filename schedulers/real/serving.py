"""Serving one request on live instances, call by call, and handing it over by live migration — driven by a clock.

Every call to an instance process is a future; its answer comes back to the clock's thread (``Calls``), so the
state of a request in progress (``Serving``) changes only there. Live migration (ServerlessLLM §5.3), for real:
the destination is loaded; it re-prefills the tokens so far (``adopt``) while the source keeps decoding; a round
ends when the destination is done; after a round that produced fewer than the stop tokens the source stops (an
answer it still owes is dropped: the destination produces those tokens again), the destination adopts the last
few and decodes on. The user sees one token stream. ``switch`` without rounds is a restart from scratch on the
destination (the baseline a migration is compared with; ``experiments/serverless/pause.py`` measures both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from harness.executors.workers import WorkerTimeoutError
from schedulers.clock import Clock

Answer = Callable[[float, Any, BaseException | None], None]


class Calls:
    """Calls to instance processes from the clock's thread: ``call`` submits, and ``then(start_s, result, error)``
    runs on the clock's thread with the answer, the failure, or a ``WorkerTimeoutError`` after ``timeout_s``
    (an answer after that is dropped)."""

    def __init__(self, clock: Clock, timeout_s: float) -> None:
        self.clock, self.timeout_s = clock, timeout_s

    def call(self, handle: Any, method: str, *args: Any, then: Answer) -> None:
        start = self.clock.now()
        pending = [True]
        fut = handle.submit(method, *args)
        fut.add_done_callback(lambda f: self.clock.post(self._answer, pending, start, f, then))
        self.clock.at(start + self.timeout_s, self._overdue, pending, start, handle, method, then)

    @staticmethod
    def _answer(pending: list[bool], start: float, fut: Any, then: Answer) -> None:
        if not pending[0]:
            return
        pending[0] = False
        error = fut.exception() if not fut.cancelled() else RuntimeError("call cancelled")
        then(start, None if error is not None else fut.result(), error)

    def _overdue(self, pending: list[bool], start: float, handle: Any, method: str, then: Answer) -> None:
        if pending[0]:
            pending[0] = False
            then(start, None, WorkerTimeoutError(f"worker {getattr(handle, 'name', '?')!r}: {method}() gave no "
                                                 f"answer in {self.timeout_s:g} s"))


def ignore(_start: float, _result: Any, _error: BaseException | None) -> None:
    """For calls whose answer changes nothing (``finish``)."""


class ServingEvents(Protocol):
    """What a request in progress reports (on the clock's thread)."""

    def first_token(self, t: float) -> None: ...

    def done(self, t: float) -> None: ...

    def failed(self, reason: str) -> None: ...

    def stop_source(self, new_tokens: int) -> None:
        """The last migration round produced ``new_tokens`` (fewer than the stop tokens, or the round cap): stop the
        source (the owner answers with ``switch``)."""

    def destination_failed(self, reason: str) -> None: ...


def reason_of(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


class Serving:
    """One request on a live instance: ``begin`` (prefill, first token), ``step`` in chunks of ``chunk`` tokens,
    ``migrate`` to a loaded destination in rounds, ``switch`` to it. Token times are the clock's time at each call's
    start plus the instance's own offsets (no clock crosses machines)."""

    def __init__(self, calls: Calls, handle: Any, rid: int, prompt: list[int], output_tokens: int, chunk: int,
                 events: ServingEvents) -> None:
        self.calls, self.handle, self.rid = calls, handle, rid
        self.prompt, self.output_tokens, self.chunk, self.events = prompt, output_tokens, chunk, events
        self.tokens: list[int] = []
        self.times_s: list[float] = []
        self.start_s = calls.clock.now()
        self.over = False  # finished, failed or cancelled: answers still owed are dropped
        self.dest: Any = None
        self.switching = False
        self.rounds = 0
        self.migrated = 0
        self._before = 0
        self._stop_tokens, self._max_rounds = 1, 1

    def start(self) -> None:
        self.calls.call(self.handle, "begin", self.rid, self.prompt, then=self._answer_of(self.handle))

    def cancel(self) -> None:
        """Its instance is gone (preempted, killed): nothing more happens."""
        self.over = True

    def max_gap_s(self) -> float:
        """The largest pause between consecutive tokens (what a migration costs the user)."""
        return max((b - a for a, b in zip(self.times_s, self.times_s[1:], strict=False)), default=0.0)

    def _answer_of(self, handle: Any) -> Answer:
        return lambda start, out, error: self._tokens(handle, start, out, error)

    def _tokens(self, handle: Any, start: float, out: Any, error: BaseException | None) -> None:
        if self.over or handle is not self.handle:
            return  # a stopped source's late answer
        if error is not None:
            self.over = True
            self.events.failed(reason_of(error))
            return
        first = not self.tokens
        self.tokens.extend(out["tokens"])
        self.times_s.extend(start + dt for dt in out["offsets_s"])
        if first:
            self.events.first_token(self.times_s[0])
        self._next()

    def _next(self) -> None:
        if len(self.tokens) >= self.output_tokens:
            self.over = True
            self.calls.call(self.handle, "finish", self.rid, then=ignore)
            self.events.done(self.times_s[-1])
            return
        if self.switching:
            return  # the destination is adopting the last tokens; it decodes on when done
        n = min(self.chunk, self.output_tokens - len(self.tokens))
        self.calls.call(self.handle, "step", self.rid, n, then=self._answer_of(self.handle))

    # ------------------------------------------------------------------ live migration
    def migrate(self, dest: Any, stop_tokens: int, max_rounds: int) -> None:
        """``dest`` is loaded: run re-prefill rounds while the source decodes on."""
        self.dest, self.rounds = dest, 0
        self._stop_tokens, self._max_rounds = stop_tokens, max_rounds
        self._round()

    def _round(self) -> None:
        self._before = len(self.tokens)
        self.calls.call(self.dest, "adopt", self.rid, self.prompt + self.tokens, then=self._adopted)

    def _adopted(self, _start: float, _out: Any, error: BaseException | None) -> None:
        if self.over or self.dest is None or self.switching:
            return
        if error is not None:
            self.dest = None
            self.events.destination_failed(reason_of(error))
            return
        new = len(self.tokens) - self._before
        self.rounds += 1
        if new < self._stop_tokens or self.rounds >= self._max_rounds:
            self.events.stop_source(new)
        else:
            self._round()

    def switch(self, dest: Any) -> None:
        """The source stops now (an answer it still owes is dropped); ``dest`` adopts the tokens so far and decodes
        on (after migration rounds: the last few; without: everything, a restart)."""
        src, self.handle, self.dest = self.handle, dest, None
        self.switching = True
        self.migrated += 1
        self.calls.call(src, "finish", self.rid, then=ignore)
        self.calls.call(dest, "adopt", self.rid, self.prompt + self.tokens, then=self._resumed)

    def _resumed(self, _start: float, _out: Any, error: BaseException | None) -> None:
        if self.over:
            return
        self.switching = False
        if error is not None:
            self.over = True
            self.events.failed(reason_of(error))
            return
        self._next()

