"""Keep-alive policies: fixed windows, the hybrid histogram, demotion chains."""

from __future__ import annotations

import pytest

from schedulers.fixed import FixedKeepAlive
from schedulers.hybrid_histogram import HybridHistogramKeepAlive


def test_fixed() -> None:
    k = FixedKeepAlive(120, demote_to=["ssd"])
    k.observe_idle("m", 5.0)
    assert k.decide("m").keep_alive_s == 120
    assert k.demote_to == ("ssd",)


@pytest.mark.parametrize("chain", [["ssd", "dram"], ["gpu"], ["dram", "dram"]])
def test_bad_demotion_chain(chain: list[str]) -> None:
    with pytest.raises(ValueError, match="demote_to"):
        FixedKeepAlive(60, demote_to=chain)  # type: ignore[arg-type]


def test_hybrid_falls_back_with_few_samples() -> None:
    k = HybridHistogramKeepAlive(default_keep_alive_s=600)
    for _ in range(3):
        k.observe_idle("m", 300.0)
    assert k.decide("m").keep_alive_s == 600
    assert k.decide("other").keep_alive_s == 600


def test_hybrid_windows_from_percentiles() -> None:
    k = HybridHistogramKeepAlive(bin_s=60, min_samples=10, cv_threshold=2.0)
    for _ in range(50):
        k.observe_idle("m", 10 * 60 + 30)  # every idle time in the 10th minute
    d = k.decide("m")
    assert d.prewarm_s == pytest.approx(10 * 60 * 0.9)  # 5th percentile − 10 %
    assert d.keep_alive_s == pytest.approx(11 * 60 * 1.1)  # 99th percentile + 10 %


def test_hybrid_out_of_range_falls_back() -> None:
    k = HybridHistogramKeepAlive(range_s=3600, default_keep_alive_s=42)
    for _ in range(20):
        k.observe_idle("m", 10_000)
    assert k.decide("m").keep_alive_s == 42
