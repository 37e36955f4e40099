"""sim_vs_real's calibration from a real run's tables: the runtime start-up split from the build, and the
runtime's costs for the simulated cluster (hand-made cold_starts frames; the real run replaced by a fake)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from omegaconf import DictConfig

from experiments.serverless import validation
from experiments.serverless.validation import calibrate, calibrate_runtime, runtime_s_mean
from schedulers.cluster import RuntimeTimes


def _requests(models: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"model": models, "status": "done", "input_tokens": 16, "output_tokens": 9,
                         "prefill_s": 0.1, "decode_s": 0.8})


def _cold(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {"tier": "ssd", "bytes": 1_000_000_000, "download_s": None, "model_build_s": 0.3}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_calibrate_splits_fresh_startup_from_the_build() -> None:
    # weights 1 s (1 GB/s); load = handoff + imports + weights + build (0.5 s)
    cold = _cold([
        {"model": "tiny-opt#0", "runtime": "fresh", "handoff_s": 1.0, "imports_s": 4.0, "weights_s": 1.0,
         "load_s": 6.5},
        {"model": "tiny-opt#1", "runtime": "fresh", "handoff_s": 1.2, "imports_s": 4.0, "weights_s": 1.0,
         "load_s": 6.7},
        {"model": "tiny-opt#0", "runtime": "fresh", "handoff_s": 1.4, "imports_s": 4.2, "weights_s": 1.0,
         "load_s": 7.1},
        {"model": "tiny-llama#0", "runtime": "fresh", "handoff_s": 0.5, "imports_s": 3.0, "weights_s": 1.0,
         "load_s": 4.75},
    ])
    gbps, times = calibrate(_requests(["tiny-opt#0", "tiny-opt#1", "tiny-llama#0"]), cold)
    assert gbps["ssd"] == pytest.approx(1.0)
    assert times["tiny-opt"].startup_s == pytest.approx(5.2)  # median of 5.0, 5.2, 5.6
    assert times["tiny-opt"].build_s == pytest.approx(0.5)
    assert times["tiny-llama"].startup_s == pytest.approx(3.5)
    assert times["tiny-llama"].build_s == pytest.approx(0.25)
    # every measured start-up, for the simulator to draw from (its spread, not only the median)
    assert times["tiny-opt"].startup_samples_s == pytest.approx((5.0, 5.2, 5.6))
    assert times["tiny-llama"].startup_samples_s == pytest.approx((3.5,))


def test_calibrate_reads_runs_from_before_the_runtime_columns() -> None:
    """Old runs recorded process_start_s (fresh process start until imported) and no runtime: it is the
    hand-off, and every cold start was fresh."""
    cold = _cold([{"model": "tiny-opt#0", "process_start_s": 2.0, "imports_s": 3.0, "weights_s": 1.0,
                   "load_s": 6.25}])
    _, times = calibrate(_requests(["tiny-opt#0"]), cold)
    assert (times["tiny-opt"].startup_s, times["tiny-opt"].build_s) == pytest.approx((5.0, 0.25))
    bare = _cold([{"model": "tiny-opt#0", "weights_s": 1.0, "load_s": 1.5}])  # no phases at all: all build
    _, times = calibrate(_requests(["tiny-opt#0"]), bare)
    assert (times["tiny-opt"].startup_s, times["tiny-opt"].build_s) == pytest.approx((0.0, 0.5))


def test_a_pool_run_gives_no_per_model_startup_but_excludes_its_waits_from_the_build() -> None:
    cold = _cold([
        {"model": "tiny-opt#0", "runtime": "pool", "handoff_s": 0.01, "imports_s": 0.0, "weights_s": 1.0,
         "load_s": 1.51},
        {"model": "tiny-opt#1", "runtime": "pool", "handoff_s": 6.0, "imports_s": 0.0, "weights_s": 1.0,
         "load_s": 7.5},
    ])
    _, times = calibrate(_requests(["tiny-opt#0", "tiny-opt#1"]), cold)
    assert times["tiny-opt"].startup_s == 0.0
    assert times["tiny-opt"].build_s == pytest.approx(0.5)


def test_calibrate_runtime_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    handoffs = [0.02, 0.01, 0.03, 5.0, 7.0]  # the last two waited for a worker start
    pool = _cold([{"model": "tiny-opt#0", "runtime": "pool", "handoff_s": h} for h in handoffs])
    stats = {"runtime": "pool", "pool_size": 2, "worker_start_s": 8.0}
    assert calibrate_runtime(pool, stats) == RuntimeTimes("pool", handoff_s=0.02, pool_size=2, worker_start_s=8.0)
    fork = _cold([{"model": "tiny-opt#0", "runtime": "forkserver", "handoff_s": h} for h in (0.1, 0.3, 0.2)])
    assert calibrate_runtime(fork, {"runtime": "forkserver", "pool_size": 0}) == \
        RuntimeTimes("forkserver", handoff_s=0.2)
    assert calibrate_runtime(pool, {}) == RuntimeTimes()  # a run that names no runtime ran fresh
    assert calibrate_runtime(pd.DataFrame(), {"runtime": "forkserver"}) == RuntimeTimes("forkserver")
    with caplog.at_level(logging.WARNING):
        old = calibrate_runtime(pool, {"runtime": "pool", "worker_start_s": float("nan")})
    assert old == RuntimeTimes("pool", handoff_s=0.03, pool_size=1, worker_start_s=0.0)  # every hand-off counts
    assert "worker_start_s" in caplog.text
    assert "pool_size" in caplog.text
    with pytest.raises(ValueError, match=r"stats\['runtime'\]='zygote'"):
        calibrate_runtime(pool, {"runtime": "zygote"})


def test_runtime_s_mean_counts_handoff_and_imports() -> None:
    cold = _cold([{"model": "a", "process_start_s": 1.0, "imports_s": 3.0}, {"model": "a", "handoff_s": 2.0}])
    assert runtime_s_mean(cold) == pytest.approx(3.0)


def test_sim_vs_real_simulates_the_real_runs_runtime(compose_cfg: Callable[..., DictConfig], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibrated cluster pays the runtime the real run used; sim_vs_real.json records it."""
    stats = {"wall_s": 1.0, "gpu_seconds": 10.0, "runtime": "pool", "pool_size": 1, "worker_start_s": 30.0}

    def fake_real(cfg: DictConfig, entry: Any, requests: list[Any], models: tuple[str, ...],
                  run_root: Path, runtime: str | None = None) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
        first = {r.model: r.request_id for r in reversed(requests)}
        df = pd.DataFrame({"request_id": [r.request_id for r in requests], "model": [r.model for r in requests],
                           "arrival_s": [r.arrival_s for r in requests], "status": "done",
                           "input_tokens": [r.input_tokens for r in requests],
                           "output_tokens": [r.output_tokens for r in requests], "prefill_s": 0.1, "decode_s": 0.5,
                           "cold_start": [first[r.model] == r.request_id for r in requests], "ttft_s": 2.0,
                           "e2e_s": 2.5, "timed_out": False})
        cold = _cold([{"model": m, "runtime": "pool", "handoff_s": 0.05, "imports_s": 0.0, "weights_s": 1.0,
                       "load_s": 1.5} for m in first])
        return df, dict(stats), cold

    monkeypatch.setattr(validation, "run_policy_real", fake_real)
    cfg = compose_cfg("experiment=sim_vs_real", "smoke=true")
    result = validation.run_sim_vs_real(cfg, tmp_path)
    calib = next(iter(result.documents["sim_vs_real"]["calibration"].values()))
    assert calib["runtime"] == {"kind": "pool", "handoff_s": 0.05, "pool_size": 1, "worker_start_s": 30.0,
                                "refill": "after_load", "prepared_engines": False}
    assert calib["model_times"]
    assert all(t["startup_s"] == 0.0 for t in calib["model_times"].values())  # a pool pays no per-model start-up
    errors = result.tables["errors"].set_index("metric")
    assert errors.loc["runtime_s_mean", "real"] == pytest.approx(0.05)
    assert errors.loc["runtime_s_mean", "sim"] >= 0.05  # the hand-off, plus any wait for the one worker
    # the simulation ran experiment.replicates times: every request once per replicate, the spread reported
    reps = int(cfg.experiment.replicates)
    assert reps > 1
    assert calib["replicates"] == reps
    assert (errors["replicates"] == reps).all()
    requests = result.tables["requests"]
    n_real = int((requests["mode"] == "real").sum())
    sim_rows = requests[requests["mode"] == "sim"]
    assert sorted(sim_rows["replicate"].unique()) == list(range(reps))
    assert (sim_rows.groupby("replicate").size() == n_real).all()
    # the sim's summary and error rows are the median over the replicates' own values, with their spread
    per_rep = sim_rows.groupby("replicate")["ttft_s"].quantile(0.5)
    summary = result.tables["summary"]
    assert summary.loc[summary["mode"] == "sim", "ttft_s_p50"].item() == pytest.approx(per_rep.median())
    p50 = errors.loc["ttft_s_p50"]
    assert (p50["sim"], p50["sim_p10"], p50["sim_p90"]) == pytest.approx(
        (per_rep.median(), per_rep.quantile(0.1), per_rep.quantile(0.9)))


def test_sim_vs_real_refuses_zero_replicates_before_any_real_run(compose_cfg: Callable[..., DictConfig],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_real_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a real run started before experiment.replicates was checked")

    monkeypatch.setattr(validation, "run_policy_real", no_real_run)
    cfg = compose_cfg("experiment=sim_vs_real", "smoke=true", "experiment.replicates=0")
    with pytest.raises(ValueError, match=r"experiment\.replicates=0"):
        validation.run_sim_vs_real(cfg, Path("/nonexistent"))


def test_dispatch_overhead_is_what_real_queues_exceed_simulated_ones_by() -> None:
    real = pd.DataFrame({"request_id": [0, 1, 2, 3], "queue_s": [0.003, 0.004, 5.002, 0.010]})
    sim = pd.DataFrame({"request_id": [0, 1, 2, 3], "queue_s": [0.0, 0.0, 5.0, 0.0]})
    assert validation.dispatch_overhead(real, sim) == pytest.approx(0.0035)  # the waits the sim models are out
    assert validation.dispatch_overhead(real, real) == 0.0
    assert validation.dispatch_overhead(real.drop(columns="queue_s"), sim) == 0.0  # a run without the column


def test_a_falling_prefill_fit_calibrates_to_the_median_prefill() -> None:
    """Noise can make prefill fall with the prompt length; cutting the slope to 0 must not keep the line's raised
    intercept (above every measured prefill), so the flat profile is the median."""
    req = _requests(["tiny-opt#0"] * 4).assign(input_tokens=[8, 16, 24, 32], prefill_s=[0.006, 0.004, 0.003, 0.001])
    cold = _cold([{"model": "tiny-opt#0", "runtime": "pool", "handoff_s": 0.0, "imports_s": 0.0, "weights_s": 0.01,
                   "load_s": 0.02}])
    _, times = calibrate(req, cold)
    assert times["tiny-opt"].prefill_s_per_token == 0.0
    assert times["tiny-opt"].first_token_s == pytest.approx(0.0035)
    rising = req.assign(prefill_s=[0.001, 0.002, 0.003, 0.004])
    _, times = calibrate(rising, cold)
    assert times["tiny-opt"].prefill_s_per_token == pytest.approx(0.000125)
    assert times["tiny-opt"].first_token_s == pytest.approx(0.0, abs=1e-9)
