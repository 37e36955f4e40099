"""Seeded workloads: per-model arrival processes, model popularity and token lengths, as plain arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from schedulers.catalog import arch_facts, base_name
from schedulers.errors import WorkloadConfigError
from schedulers.traces import load_trace


@dataclass(frozen=True)
class RequestArrays:
    """A workload materialized: arrival times (sorted), model index per request, model names, token counts."""

    arrival_s: np.ndarray
    model_idx: np.ndarray
    models: tuple[str, ...]
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)

    @classmethod
    def empty(cls, models: tuple[str, ...]) -> RequestArrays:
        """No requests (for ``models``)."""
        none = np.zeros(0)
        return cls(none, none.astype(np.int64), models, none.astype(np.int64), none.astype(np.int64))


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise WorkloadConfigError(f"workload.{key}={value!r} is not allowed; it must be > 0")


class Arrivals(Protocol):
    """Arrival times of one model's requests over ``[0, duration_s)`` at ``rps``."""

    def times(self, rps: float, duration_s: float, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class GammaArrivals:
    """Gamma renewal process: inter-arrivals with mean 1/rate and coefficient of variation ``cv``
    (shape k = 1/cv², scale θ = cv²/rate; ServerlessLLM §7 and the Azure Functions trace shape)."""

    cv: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("arrivals.cv", self.cv)

    def times(self, rps: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        shape = 1.0 / self.cv**2
        scale = self.cv**2 / rps
        n = int(rps * duration_s * 1.2 + 10 * np.sqrt(rps * duration_s + 1) + 10)
        # Stationary (equilibrium) renewal process: the first arrival is the forward recurrence time U · X̃
        # with
        # X̃ size-biased, i.e. Gamma(k + 1, θ). Starting at an arrival instead inflates counts by (cv² − 1) /
        # 2.
        first = rng.uniform() * rng.gamma(shape + 1.0, scale)
        out = first + np.concatenate([[0.0], np.cumsum(rng.gamma(shape, scale, size=n - 1))])
        while out[-1] < duration_s:
            out = np.concatenate([out, out[-1] + np.cumsum(rng.gamma(shape, scale, size=n))])
        return out[out < duration_s]


@dataclass(frozen=True)
class PoissonArrivals:
    """Poisson process: exponential inter-arrivals (Gamma with CV 1)."""

    def times(self, rps: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        return GammaArrivals(1.0).times(rps, duration_s, rng)


class Popularity(Protocol):
    """Share of the total request rate each of ``n`` models receives."""

    def shares(self, n: int) -> np.ndarray: ...


@dataclass(frozen=True)
class UniformPopularity:
    """Every model gets the same share."""

    def shares(self, n: int) -> np.ndarray:
        return np.full(n, 1.0 / n)


@dataclass(frozen=True)
class ZipfPopularity:
    """Model i (1-based) gets a share ∝ 1 / i^s (Zipf's law)."""

    s: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("popularity.s", self.s)

    def shares(self, n: int) -> np.ndarray:
        w = 1.0 / np.arange(1, n + 1) ** self.s
        return w / w.sum()


class Tokens(Protocol):
    """Prompt and output token counts for ``n`` requests."""

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class UniformTokens:
    """Prompt and output lengths uniform in inclusive ranges (GSM8K-like short or ShareGPT-like long
    requests)."""

    input_min: int = 64
    input_max: int = 256
    output_min: int = 64
    output_max: int = 256

    def __post_init__(self) -> None:
        for lo, hi, key in (
            (self.input_min, self.input_max, "input"),
            (self.output_min, self.output_max, "output"),
        ):
            if lo < 1 or hi < lo:
                raise WorkloadConfigError(f"tokens.{key}_min/max=({lo}, {hi}) not allowed; need 1 ≤ min ≤ max")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return (
            rng.integers(self.input_min, self.input_max + 1, size=n),
            rng.integers(self.output_min, self.output_max + 1, size=n),
        )


@dataclass(frozen=True)
class TraceTokens:
    """Token lengths resampled (with replacement) from an Azure LLM trace (``code``, ``conv`` or a CSV
    path)."""

    trace: str = "conv"
    max_output: int = 2048

    def __post_init__(self) -> None:
        if self.max_output < 1:
            raise WorkloadConfigError(f"tokens.max_output={self.max_output!r} is not allowed; it must be ≥ 1")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        t = load_trace(self.trace)
        idx = rng.integers(0, len(t), size=n)
        return t.input_tokens[idx], np.minimum(t.output_tokens[idx], self.max_output)


@dataclass(frozen=True)
class Workload:
    """Requests for ``models`` at a total rate ``rps`` over ``duration_s`` (or ``num_requests``, whichever is
    set).

    Each model's requests form their own arrival process at ``rps × share`` (per-model Gamma/Poisson).
    ``replay`` (a trace name or path) takes arrival times *and* token lengths from the trace, scaled in time
    so
    its mean rate is ``rps`` (``rps: null`` keeps the trace's own times), models drawn by popularity.
    """

    models: Sequence[str] = ("opt-6.7b",)
    rps: float | None = 1.0
    duration_s: float | None = 600.0
    num_requests: int | None = None
    arrivals: Arrivals = GammaArrivals()
    popularity: Popularity = UniformPopularity()
    tokens: Tokens = UniformTokens()
    replay: str | None = None
    name: str = "workload"

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        if not self.models:
            raise WorkloadConfigError("workload.models is empty; name at least one model from conf/model/")
        for m in set(self.models):
            arch_facts(base_name(m))  # raises UnknownModelError early
        if self.rps is not None:
            _check_positive("rps", self.rps)
        elif self.replay is None:
            raise WorkloadConfigError("workload.rps=None is only allowed with replay (the trace's own times)")
        if self.duration_s is not None:
            _check_positive("duration_s", self.duration_s)
        if self.num_requests is not None and self.num_requests < 1:
            raise WorkloadConfigError(f"workload.num_requests={self.num_requests!r} must be ≥ 1 or null")
        if self.duration_s is None and self.num_requests is None:
            raise WorkloadConfigError("workload: set duration_s or num_requests")

    def generate(self, seed: int) -> RequestArrays:
        """The requests, deterministic in ``seed`` (one ``numpy.random.Generator`` per model, spawned from
        it)."""
        root = np.random.default_rng(seed)
        if self.replay is not None:
            return self._replay(root)
        assert self.rps is not None
        duration = self.duration_s if self.duration_s is not None else (self.num_requests or 1) / self.rps
        if self.num_requests is not None and self.duration_s is None:
            duration *= 1.05  # a margin so that truncating to num_requests is rarely short
        shares = self.popularity.shares(len(self.models))
        times, idx = [], []
        for i, rng in enumerate(root.spawn(len(self.models))):
            t = self.arrivals.times(self.rps * shares[i], duration, rng)
            times.append(t)
            idx.append(np.full(len(t), i, dtype=np.int32))
        arrival = np.concatenate(times)
        model_idx = np.concatenate(idx)
        order = np.lexsort((model_idx, arrival))
        arrival, model_idx = arrival[order], model_idx[order]
        if self.num_requests is not None:
            arrival, model_idx = arrival[: self.num_requests], model_idx[: self.num_requests]
        inp, out = self.tokens.sample(len(arrival), root)
        return RequestArrays(
            arrival, model_idx, tuple(self.models), np.asarray(inp, np.int64), np.asarray(out, np.int64)
        )

    def _replay(self, rng: np.random.Generator) -> RequestArrays:
        trace = load_trace(self.replay or "")
        t = trace.arrival_s.copy()
        if self.rps is not None:
            t *= (len(t) / max(t[-1], 1e-9)) / self.rps
        keep = np.ones(len(t), dtype=bool)
        if self.duration_s is not None:
            keep &= t < self.duration_s
        n = int(keep.sum()) if self.num_requests is None else min(int(keep.sum()), self.num_requests)
        shares = self.popularity.shares(len(self.models))
        model_idx = rng.choice(len(self.models), size=n, p=shares).astype(np.int32)
        return RequestArrays(
            t[keep][:n],
            model_idx,
            tuple(self.models),
            trace.input_tokens[keep][:n],
            trace.output_tokens[keep][:n],
        )
