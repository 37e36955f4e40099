"""Cluster configuration and calibration files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.loading.calibrate import calibration_document
from schedulers.calibrated import calibrated
from schedulers.catalog import model_info
from schedulers.cluster import Cluster, ModelTimes, RuntimeTimes
from schedulers.errors import CalibrationError

EXAMPLE = "schedulers/data/calibration_example.yaml"


def test_calibrated_example_sets_tiers_and_model_times() -> None:
    c = calibrated(EXAMPLE, servers=2)
    assert (c.dram_gbps, c.ssd_gbps, c.remote_gbps) == (24.0, 11.5, 1.15)
    assert c.servers == 2
    assert c.times_for("opt-6.7b#3").build_s == pytest.approx(0.35)


def test_calibration_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not found"):
        calibrated(str(tmp_path / "nope.yaml"))


def test_calibration_missing_tier(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text("tiers:\n  dram: {bw_gbps: 20}\n  ssd: {bw_gbps: 5}\n")
    with pytest.raises(CalibrationError, match="'remote' is missing"):
        calibrated(str(path))


@pytest.mark.parametrize(
    ("key", "value"),
    [("servers", 0), ("gpu_mem_gb", 0.0), ("ssd_gbps", -1.0), ("dram_gb", -5.0), ("load_slots", 0)],
)
def test_bad_cluster_values(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"cluster.{key}"):
        Cluster(**{key: value})  # type: ignore[arg-type]


def _calibrate_output(remote_measured: bool) -> dict[str, object]:
    """What `experiment=calibrate` writes, from a synthetic trials table (the real writer, not a copy)."""
    states = ["cold", "warm", "hot", *(["remote"] if remote_measured else [])]
    gbps = {"cold": 3.0, "warm": 9.0, "hot": 20.0, "remote": 1.1}
    trials = pd.DataFrame(
        [
            {
                "ok": True,
                "loader": "native",
                "model": model,
                "bytes": nbytes,
                "device": "cpu",
                "cache_state": state,
                "throughput_gbps": gbps[state] * (1.0 if model == "opt-1.3b" else 0.5),
                "ceiling_gbps": 2 * gbps[state],
                "t_model_build_s": 0.2,
                "t_first_token_s": 0.04,
            }
            for model, nbytes in (("opt-125m", 250_000_000), ("opt-1.3b", 2_600_000_000))
            for state in states
            for _ in range(3)
        ]
    )
    return calibration_document(trials, {}, {}, "native", None)


def test_reads_what_calibrate_writes(tmp_path: Path) -> None:
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump(_calibrate_output(remote_measured=True)))
    c = calibrated(str(path))
    # The largest model's medians calibrate the tiers: ssd ← cold, dram ← hot, remote ← remote.
    assert (c.ssd_gbps, c.dram_gbps, c.remote_gbps) == pytest.approx((3.0, 20.0, 1.1))
    assert c.times_for("opt-1.3b#2") == ModelTimes(build_s=0.2, first_token_s=0.04)


def test_absent_tier_names_the_reason_and_fix_and_an_override_fills_it(tmp_path: Path) -> None:
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump(_calibrate_output(remote_measured=False)))
    with pytest.raises(
        CalibrationError, match=r"'remote' is missing.*absent: no successful remote.*cluster\.remote_gbps"
    ):
        calibrated(str(path))
    assert calibrated(str(path), remote_gbps=1.25).remote_gbps == 1.25


def test_calibrated_profile_replaces_the_roofline(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(
        "tiers: {dram: {bw_gbps: 20}, ssd: {bw_gbps: 5}, remote: {bw_gbps: 1}}\n"
        "models: {tiny-opt: {first_token_s: 0.5, prefill_s_per_token: 0.001, decode_s_per_token: 0.03}}\n"
    )
    info = model_info("tiny-opt#1", calibrated(str(path)))
    assert (info.prefill_base_s, info.prefill_s_per_token, info.decode_s_per_token) == (0.5, 0.001, 0.03)
    default = model_info("tiny-opt", Cluster())
    assert default.decode_s_per_token != 0.03


def test_calibration_bad_model_time(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(
        "tiers: {dram: {bw_gbps: 20}, ssd: {bw_gbps: 5}, remote: {bw_gbps: 1}}\nmodels: {tiny-opt: {build_s: fast}}\n"
    )
    with pytest.raises(CalibrationError, match=r"models\.tiny-opt\.build_s='fast'"):
        calibrated(str(path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "zygote"}, r"runtime.kind='zygote'.*fresh"),
        ({"kind": "pool"}, r"runtime.pool_size=0.*kind=pool"),
        ({"kind": "fresh", "handoff_s": 1.0}, r"runtime.handoff_s=1.0.*kind=fresh.*startup_s"),
        ({"kind": "forkserver", "pool_size": 2}, r"pool_size=2.*kind=forkserver"),
        ({"kind": "pool", "pool_size": 1, "worker_start_s": -1.0}, r"runtime.worker_start_s=-1.0"),
        ({"kind": "forkserver", "handoff_s": float("nan")}, r"runtime.handoff_s=nan"),
        ({"kind": "pool", "pool_size": 1.5}, r"runtime.pool_size=1.5"),
    ],
)
def test_bad_runtime_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RuntimeTimes(**kwargs)  # type: ignore[arg-type]


def test_runtime_from_a_config_mapping() -> None:
    c = Cluster(runtime={"kind": "pool", "pool_size": 2, "worker_start_s": 8.0})  # type: ignore[arg-type]
    assert c.runtime == RuntimeTimes("pool", pool_size=2, worker_start_s=8.0)
    assert Cluster().runtime == RuntimeTimes()
    with pytest.raises(ValueError, match=r"unknown keys \['size'\]"):
        Cluster(runtime={"kind": "pool", "size": 2})  # type: ignore[arg-type]


def test_cluster_options_take_a_runtime_block(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("experiment=serverless", "cluster=generic", "cluster.runtime.kind=pool",
                      "cluster.runtime.pool_size=2", "cluster.runtime.worker_start_s=3.5")
    assert instantiate(cfg.cluster).runtime == RuntimeTimes("pool", pool_size=2, worker_start_s=3.5)
    assert instantiate(compose_cfg("experiment=serverless", "cluster=sllm_cluster").cluster).runtime == RuntimeTimes()


def test_model_startup_follows_the_runtime() -> None:
    times = {"tiny-opt": ModelTimes(startup_s=4.0)}
    assert model_info("tiny-opt#2", Cluster(model_times=times)).startup_s == 4.0
    assert model_info("tiny-llama", Cluster(model_times=times)).startup_s == 0.0
    fork = Cluster(model_times=times, runtime=RuntimeTimes("forkserver", handoff_s=0.03))
    assert model_info("tiny-opt", fork).startup_s == 0.03  # the fork, whatever the model


RUNTIMES_DOC = """
tiers: {dram: {bw_gbps: 20}, ssd: {bw_gbps: 5}, remote: {bw_gbps: 1}}
models: {tiny-opt: {build_s: 0.2}}
runtimes:
  fresh: {kind: fresh, handoff_s: 0.9, startup_s: {tiny-opt: 5.5}}
  pool: {kind: pool, handoff_s: 0.01, size: 2, worker_start_s: 7.5, startup_s: {tiny-opt: 0.02}}
"""


def test_calibrated_runtime_name_picks_the_runtime(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(RUNTIMES_DOC)
    fresh = calibrated(str(path))
    assert fresh.runtime == RuntimeTimes()
    assert fresh.times_for("tiny-opt") == ModelTimes(build_s=0.2, startup_s=5.5)
    pool = calibrated(str(path), runtime_name="pool")
    assert pool.runtime == RuntimeTimes("pool", handoff_s=0.01, pool_size=2, worker_start_s=7.5)
    assert pool.startup_s("tiny-opt") == 0.01
    with pytest.raises(CalibrationError, match=r"runtime_name='forkserver'.*\['fresh', 'pool'\]"):
        calibrated(str(path), runtime_name="forkserver")
    mine = RuntimeTimes("forkserver", handoff_s=0.1)
    assert calibrated(str(path), runtime=mine).runtime == mine  # cluster.runtime={...} replaces the file's


def test_a_calibration_without_runtimes_costs_nothing_fresh_and_refuses_others(tmp_path: Path) -> None:
    c = calibrated(EXAMPLE)
    assert c.runtime == RuntimeTimes()
    assert c.startup_s("opt-6.7b") == 0.0
    with pytest.raises(CalibrationError, match=r"runtime_name='pool'.*no entries.*runtimes=\[fresh,pool\]"):
        calibrated(EXAMPLE, runtime_name="pool")


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("fresh: {startup_s: {}}", r"runtimes.fresh.startup_s lacks \['tiny-opt'\]"),
        ("fresh: {startup_s: {tiny-opt: slow}}", r"runtimes.fresh.startup_s.tiny-opt='slow'"),
        ("fresh: {kind: zygote}", r"runtimes.fresh.kind='zygote'"),
        ("fresh: {kind: pool, handoff_s: 0}", r"runtimes.fresh \(kind pool\) has no size"),
        ("fresh: {kind: pool, size: 0, worker_start_s: 1}", r"runtimes.fresh.size=0"),
    ],
)
def test_bad_runtime_entries(tmp_path: Path, entry: str, match: str) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text("tiers: {dram: {bw_gbps: 20}, ssd: {bw_gbps: 5}, remote: {bw_gbps: 1}}\n"
                    f"models: {{tiny-opt: {{build_s: 0.2}}}}\nruntimes:\n  {entry}\n")
    with pytest.raises(CalibrationError, match=match):
        calibrated(str(path))


def test_the_engine_set_up_is_paid_unless_the_pool_holds_prepared_engines() -> None:
    times = {"tiny-opt": ModelTimes(build_s=0.2, engine_s=3.0)}
    assert model_info("tiny-opt", Cluster(model_times=times)).build_s == pytest.approx(3.2)  # fresh: build + set-up
    pool = RuntimeTimes("pool", pool_size=1, worker_start_s=60.0)
    assert model_info("tiny-opt", Cluster(model_times=times, runtime=pool)).build_s == pytest.approx(3.2)
    prepared = RuntimeTimes("pool", pool_size=1, worker_start_s=60.0, prepared_engines=True)
    assert model_info("tiny-opt#3", Cluster(model_times=times, runtime=prepared)).build_s == pytest.approx(0.2)
    with pytest.raises(ValueError, match="prepared_engines=true is not allowed with kind=fresh"):
        RuntimeTimes(prepared_engines=True)


def test_a_calibration_carries_engine_s_and_prepared_pools(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(RUNTIMES_DOC.replace("models: {tiny-opt: {build_s: 0.2}}",
                                         "models: {tiny-opt: {build_s: 0.2, engine_s: 1.5}}")
                    .replace("worker_start_s: 7.5,", "worker_start_s: 7.5, prepared_engines: true,"))
    assert calibrated(str(path)).times_for("tiny-opt").engine_s == 1.5
    pool = calibrated(str(path), runtime_name="pool")
    assert pool.runtime.prepared_engines
    assert pool.engine_s("tiny-opt") == 0.0
    assert calibrated(str(path)).engine_s("tiny-opt") == 1.5
