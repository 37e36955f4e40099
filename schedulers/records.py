"""Per-request records of a serverless run: each request's state, its row of ``requests.parquet`` (columns named
in ``schedulers/metrics.py``), and the queues of requests waiting for a placement."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import pandas as pd

from schedulers.base import Request
from schedulers.metrics import REQUEST_COLUMNS, REQUEST_DTYPES
from schedulers.workload import RequestArrays

NEW, WAITING, ASSIGNED, RUNNING, DONE, TIMED_OUT, FAILED = range(7)
FINISHED = (DONE, TIMED_OUT, FAILED)
STATE_NAMES = ("new", "waiting", "assigned", "running", "done", "timed_out", "failed")
# Times a row keeps while its request is under way (not written to the table).
SCRATCH = ("placed_s", "enq_s", "load_start_s")


class RequestRecords:
    """The requests of one run as columns (lists indexed by request id, for speed at a million requests), their
    states, and the waiting queues: all requests oldest first (``wait_global``) and per model (``wait_model``).
    Queues are cleaned lazily: an entry whose request no longer waits is skipped where it is met."""

    def __init__(self, reqs: RequestArrays) -> None:
        n = len(reqs)
        self.n = n
        self.arrival: list[float] = reqs.arrival_s.tolist()
        self.model_of: list[str] = [reqs.models[k] for k in reqs.model_idx.tolist()]
        self.inp: list[int] = reqs.input_tokens.tolist()
        self.out: list[int] = [max(int(o), 1) for o in reqs.output_tokens.tolist()]
        self.state = [NEW] * n
        nan = math.nan
        self.r: dict[str, list[Any]] = {
            c: [nan] * n for c in ("queue_s", "load_s", "ttft_s", "e2e_s", *SCRATCH)
        }
        self.r.update(
            server=[-1] * n,
            tier_decided=[""] * n,
            tier_loaded=[""] * n,
            migration_s=[0.0] * n,
            timed_out=[False] * n,
            cold_start=[False] * n,
            migrated=[0] * n,
            preempted=[0] * n,
        )
        self.error: list[str] = [""] * n
        self.retries: list[int] = [0] * n
        models = tuple(dict.fromkeys(reqs.models))
        self.wait_global: deque[int] = deque()
        self.wait_model: dict[str, deque[int]] = {m: deque() for m in models}
        self.wait_count: dict[str, int] = dict.fromkeys(models, 0)
        self.n_waiting = 0

    def request(self, i: int) -> Request:
        return Request(i, self.model_of[i], self.arrival[i], self.inp[i], self.out[i])

    def add_waiting(self, i: int, front: bool = False) -> None:
        self.state[i] = WAITING
        m = self.model_of[i]
        if front:
            self.wait_global.appendleft(i)
            self.wait_model[m].appendleft(i)
        else:
            self.wait_global.append(i)
            self.wait_model[m].append(i)
        self.wait_count[m] += 1
        self.n_waiting += 1

    def unwait(self, i: int, new_state: int) -> None:
        self.wait_count[self.model_of[i]] -= 1
        self.n_waiting -= 1
        self.state[i] = new_state

    def waiting(self, now: float) -> dict[str, tuple[int, float]]:
        """Per model with waiting requests: (how many, the oldest one's arrival) — the view's ``waiting``."""
        out = {}
        for m, c in self.wait_count.items() if self.n_waiting else ():
            if c:
                q = self.wait_model[m]
                while q and self.state[q[0]] != WAITING:
                    q.popleft()
                out[m] = (c, self.arrival[q[0]] if q else now)
        return out

    def finish_at_timeout(self, i: int, state: int, timeout_s: float) -> None:
        """Request ``i`` is over without a first token in time (timed out, or failed): it counts at the timeout."""
        if self.state[i] == WAITING:
            self.wait_count[self.model_of[i]] -= 1
            self.n_waiting -= 1
        self.state[i] = state
        self.r["timed_out"][i] = True
        self.r["ttft_s"][i] = self.r["e2e_s"][i] = timeout_s

    def unfinished(self) -> list[int]:
        return [i for i, s in enumerate(self.state) if s not in FINISHED]

    def frame(self, extra: dict[str, list[Any]] | None = None) -> pd.DataFrame:
        """The ``requests.parquet`` rows (``extra``: more columns, e.g. a real run's status and measurements)."""
        df = pd.DataFrame(
            {
                "request_id": range(self.n),
                "model": self.model_of,
                "arrival_s": self.arrival,
                "input_tokens": self.inp,
                "output_tokens": self.out,
                **{c: self.r[c] for c in REQUEST_COLUMNS if c in self.r},
            }
        )
        df = df.astype(REQUEST_DTYPES)[[c for c in REQUEST_COLUMNS]]
        for name, values in (extra or {}).items():
            df[name] = values
        return df
