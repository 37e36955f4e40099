"""Workloads: seeded arrivals, popularity, token lengths, trace parsing and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schedulers.catalog import model_info
from schedulers.cluster import Cluster
from schedulers.errors import ModelTooLargeError, TraceFormatError, UnknownModelError, WorkloadConfigError
from schedulers.traces import load_trace
from schedulers.workload import GammaArrivals, PoissonArrivals, TraceTokens, Workload, ZipfPopularity


def test_same_seed_same_requests() -> None:
    w = Workload(models=["tiny-opt#0", "tiny-opt#1"], rps=5, duration_s=200, arrivals=GammaArrivals(4))
    a, b, c = w.generate(1), w.generate(1), w.generate(2)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.output_tokens, b.output_tokens)
    assert not np.array_equal(a.arrival_s[:10], c.arrival_s[:10])


@pytest.mark.parametrize("cv", [0.5, 1.0, 4.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    rng = np.random.default_rng(0)
    t = GammaArrivals(cv).times(10.0, 20_000.0, rng)
    gaps = np.diff(t)
    assert len(t) / 20_000.0 == pytest.approx(10.0, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.15)


def test_poisson_is_gamma_cv1() -> None:
    t = PoissonArrivals().times(2.0, 10_000.0, np.random.default_rng(3))
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)


def test_zipf_shares() -> None:
    s = ZipfPopularity(1.0).shares(4)
    assert s.sum() == pytest.approx(1.0)
    assert s[0] / s[1] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rps": 0.0}, "rps"),
        ({"rps": -1.0}, "rps"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"models": []}, "models"),
    ],
)
def test_bad_workload_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(WorkloadConfigError, match=match):
        Workload(**{"models": ["tiny-opt"], **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize("cv", [0.0, -2.0])
def test_bad_cv(cv: float) -> None:
    with pytest.raises(WorkloadConfigError, match="cv"):
        GammaArrivals(cv)


def test_unknown_model() -> None:
    with pytest.raises(UnknownModelError, match="gpt-5"):
        Workload(models=["gpt-5"])


def test_model_larger_than_a_server() -> None:
    with pytest.raises(ModelTooLargeError, match="opt-66b"):
        model_info("opt-66b", Cluster(gpus_per_server=2, gpu_mem_gb=24))


def test_trace_bad_row_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,2\n2023-11-16 18:17:04.00,ten,3\n"
    )
    with pytest.raises(TraceFormatError, match="row 3"):
        load_trace(str(path))


def test_azure_trace_replay_and_tokens() -> None:
    trace = load_trace("code")
    assert len(trace) == 8819
    assert np.all(np.diff(trace.arrival_s) >= 0)
    w = Workload(models=["tiny-opt"], rps=None, duration_s=600, replay="code")
    r = w.generate(0)
    assert np.array_equal(r.arrival_s, trace.arrival_s[: len(r)])
    inp, _ = TraceTokens("conv").sample(1000, np.random.default_rng(0))
    assert 500 < np.median(inp) < 2000


def test_trace_bad_rows_and_names(tmp_path: Path) -> None:
    header = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    cases = {
        "short.csv": (header + "2023-11-16 18:17:03.97,10\n", "row 2 has 2 fields"),
        "stamp.csv": (header + "2023-11-16 18:17:03.97,1,2\nyesterday,1,2\n", "row 3"),
        "neg.csv": (
            header + "2023-11-16 18:17:03.97,1,2\n2023-11-16 18:17:04.97,1,2\n2023-11-16 18:17:05,-1,2\n",
            "row 4",
        ),
        "header.csv": ("time,in,out\n", "row 1 must be the header"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TraceFormatError, match=match):
            load_trace(str(tmp_path / name))
    with pytest.raises(TraceFormatError, match=r"not found; name one of \['code', 'conv'\]"):
        load_trace("convv")
    with pytest.raises(WorkloadConfigError, match=r"tokens\.max_output=0"):
        TraceTokens("conv", max_output=0)


def test_replay_of_a_bad_trace_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,2\n2023-11-16 18:17:04,1,x\n")
    w = Workload(models=["tiny-opt"], rps=1.0, duration_s=60, replay=str(path))
    with pytest.raises(TraceFormatError, match="row 3"):
        w.generate(0)
