"""Hybrid histogram keep-alive (Shahrad et al., ATC'20 §4.2): pre-warm and keep-alive windows from idle
times."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schedulers.base import KeepAliveDecision, Tier
from schedulers.fixed import check_demote_to


class HybridHistogramKeepAlive:
    """Per model, a histogram of idle times in ``bin_s`` bins up to ``range_s`` (1-minute bins over 4 h).

    Pre-warm window = 5th percentile − 10 %, keep-alive window = 99th percentile + 10 % (ATC'20 §4.2). With
    too few
    samples, a flat histogram (CV of bin counts < ``cv_threshold``), or mostly out-of-range idle times, it
    falls
    back to the fixed ``default_keep_alive_s`` (the paper uses ARIMA for the out-of-range case; not modelled).
    Windows are recomputed lazily when a model's histogram changed.
    """

    def __init__(
        self,
        bin_s: float = 60.0,
        range_s: float = 4 * 3600.0,
        head_pct: float = 5.0,
        tail_pct: float = 99.0,
        margin: float = 0.1,
        min_samples: int = 10,
        cv_threshold: float = 2.0,
        oob_fraction: float = 0.5,
        default_keep_alive_s: float = 600.0,
        demote_to: Sequence[str] = ("dram", "ssd"),
    ) -> None:
        for key, value in (("bin_s", bin_s), ("range_s", range_s)):
            if not value > 0:
                raise ValueError(f"keepalive.{key}={value!r} is not allowed; it must be > 0")
        if not 0 <= head_pct < tail_pct <= 100:
            raise ValueError(
                f"keepalive.head_pct/tail_pct=({head_pct}, {tail_pct}); need 0 ≤ head < tail ≤ 100"
            )
        if default_keep_alive_s < 0:
            raise ValueError(f"keepalive.default_keep_alive_s={default_keep_alive_s!r}; it must be ≥ 0")
        self.bin_s, self.range_s = bin_s, range_s
        self.head_pct, self.tail_pct, self.margin = head_pct, tail_pct, margin
        self.min_samples, self.cv_threshold, self.oob_fraction = min_samples, cv_threshold, oob_fraction
        self.default_keep_alive_s = default_keep_alive_s
        self.demote_to: tuple[Tier, ...] = check_demote_to(demote_to)
        self.nbins = int(np.ceil(range_s / bin_s))
        self._hist: dict[str, np.ndarray] = {}
        self._oob: dict[str, int] = {}
        self._cache: dict[str, KeepAliveDecision] = {}

    def observe_idle(self, model: str, idle_s: float) -> None:
        """Record one idle time (end of the last request → next arrival) of ``model``."""
        hist = self._hist.setdefault(model, np.zeros(self.nbins, dtype=np.int64))
        b = int(idle_s // self.bin_s)
        if b >= self.nbins:
            self._oob[model] = self._oob.get(model, 0) + 1
        else:
            hist[b] += 1
        self._cache.pop(model, None)

    def decide(self, model: str) -> KeepAliveDecision:
        if model not in self._cache:
            self._cache[model] = self._compute(model)
        return self._cache[model]

    def _compute(self, model: str) -> KeepAliveDecision:
        fallback = KeepAliveDecision(self.default_keep_alive_s)
        hist = self._hist.get(model)
        if hist is None:
            return fallback
        n_in, n_oob = int(hist.sum()), self._oob.get(model, 0)
        if n_in + n_oob < self.min_samples or n_oob > self.oob_fraction * (n_in + n_oob) or n_in == 0:
            return fallback
        cv = float(hist.std() / hist.mean())
        if cv < self.cv_threshold:
            return fallback
        cdf = np.cumsum(hist) / n_in
        head_bin = int(np.searchsorted(cdf, self.head_pct / 100.0))
        tail_bin = int(np.searchsorted(cdf, self.tail_pct / 100.0))
        prewarm = head_bin * self.bin_s * (1 - self.margin)
        keep = (tail_bin + 1) * self.bin_s * (1 + self.margin)
        return KeepAliveDecision(keep_alive_s=keep, prewarm_s=prewarm)
