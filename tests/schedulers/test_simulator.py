"""Simulator invariants and event logs, on hand-written models and small clusters."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulers.base import (
    ClusterView,
    Decision,
    KeepAliveDecision,
    Placement,
    Request,
    Scheduler,
    policy_storage,
    startup_estimate_s,
)
from schedulers.cluster import Cluster, ModelTimes, RuntimeTimes
from schedulers.fixed import FixedKeepAlive
from schedulers.hybrid_histogram import HybridHistogramKeepAlive
from schedulers.kserve import KServeScheduler
from schedulers.locality import LocalityScheduler
from schedulers.ray_serve import RayServeScheduler
from schedulers.serverless import ServerlessScheduler
from schedulers.serverlessllm import ServerlessLLMScheduler
from schedulers.serverlessllm_released import ServerlessLLMReleasedScheduler
from schedulers.shepherd import ShepherdScheduler
from schedulers.simulator import SimConfig, Simulator
from schedulers.workload import RequestArrays
from tests.schedulers.conftest import fake_model

POLICIES: list[Scheduler] = [
    ServerlessLLMScheduler(),
    ServerlessLLMReleasedScheduler(),
    ServerlessScheduler(),
    LocalityScheduler(),
    ShepherdScheduler(),
    RayServeScheduler(upscale_delay_s=5),
    KServeScheduler(),
    ServerlessScheduler(cache_to=("ssd",)),  # the storage settings of sllm_scheduler
    ServerlessLLMScheduler(cache_to=(), tier_upgrade=False),
]


# default (no start-up), fresh (per-model start-up), forkserver, pool of 1 worker per server
RUNTIMES = [
    RuntimeTimes(),
    RuntimeTimes(),
    RuntimeTimes("forkserver", handoff_s=0.2),
    RuntimeTimes("pool", handoff_s=0.05, pool_size=1, worker_start_s=6.0),
]


def requests_of(
    times: list[float], models: list[int], names: tuple[str, ...], out: int | list[int] = 50, inp: int = 100
) -> RequestArrays:
    n = len(times)
    outs = np.full(n, out) if isinstance(out, int) else np.asarray(out)
    return RequestArrays(np.asarray(times, float), np.asarray(models, np.int32), names, np.full(n, inp), outs)


def small_cluster(**kw: object) -> Cluster:
    base = dict(
        servers=2,
        gpus_per_server=2,
        gpu_mem_gb=40,
        dram_gb=25,
        ssd_gb=50,
        dram_gbps=20,
        ssd_gbps=5,
        remote_gbps=1,
        ssd_replicas=1,
    )
    base.update(kw)
    return Cluster(**base)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 10_000),
    policy=st.sampled_from(range(len(POLICIES))),
    hybrid=st.booleans(),
    slots=st.integers(1, 2),
    runtime=st.sampled_from(range(4)),
    store=st.sampled_from([None, 1.5]),
    timeout_s=st.sampled_from([5.0, 300.0]),
    dram_gb=st.sampled_from([0, 25]),
)
def test_invariants(
    n: int, seed: int, policy: int, hybrid: bool, slots: int, store: float | None, timeout_s: float, dram_gb: int,
    runtime: int
) -> None:
    """Every request completes or times out exactly once; capacities hold (the simulator raises otherwise);
    no load beats bytes / bandwidth of its tier; no tier holds a checkpoint the policy's storage does not keep;
    a load reads the decided tier or (with tier upgrades) a faster one."""
    rng = np.random.default_rng(seed)
    runtime_times = RUNTIMES[runtime]  # a model's start-up as Cluster.startup_s gives it: per model if fresh
    models = {
        f"m{k}": fake_model(f"m{k}", size_gb=[8, 12, 30][k % 3], gpus=1 + (k % 3 == 2),
                            startup_s=(1.0 + k) * (runtime == 1) + runtime_times.handoff_s)
        for k in range(5)
    }
    names = tuple(models)
    times = np.sort(rng.uniform(0, 60, n)).tolist()
    reqs = requests_of(times, rng.integers(0, 5, n).tolist(), names, out=rng.integers(1, 300, n).tolist())
    keep = (
        HybridHistogramKeepAlive(bin_s=1, range_s=60, min_samples=2, cv_threshold=0.0)
        if hybrid
        else FixedKeepAlive(float(rng.choice([0, 5, 30])))
    )
    cluster = small_cluster(load_slots=slots, store_gbps=store, dram_gb=dram_gb, runtime=runtime_times)
    sim = Simulator(
        cluster, models, POLICIES[policy], keep, SimConfig(timeout_s=timeout_s, record_events=True)
    )
    res = sim.run(reqs)
    df = res.requests
    assert len(df) == n
    assert df["request_id"].is_unique
    done = df["e2e_s"].notna()
    assert done.all()
    assert (df.loc[~df["timed_out"], "ttft_s"] <= timeout_s + 1e-9).all()
    assert (df["ttft_s"] >= 0).all()
    assert (df["e2e_s"] >= df["ttft_s"] - 1e-9).all()
    timeouts = sum(1 for e in res.events if e["kind"] == "timeout")
    assert timeouts == int(df["timed_out"].sum())
    loads = [e for e in res.events if e["kind"] == "load"]
    for e in loads:
        assert e["duration_s"] >= (e["runtime_s"] + e["bytes"] / (e["gbps"] * 1e9)) * (1 - 1e-9)
        assert e["runtime_s"] >= models[e["model"]].startup_s
    assert res.stats["runtime_wait_s"] == pytest.approx(sum(e["runtime_s"] for e in loads))
    for s in sim.servers:
        assert 0 <= s.free_gpus <= s.num_gpus
    cache_to, upgrade = policy_storage(POLICIES[policy])
    if "dram" not in cache_to:
        assert all(not s.dram.items for s in sim.servers)
    order = ["gpu", "dram", "ssd", "remote", ""]
    decided, loaded = df["tier_decided"].map(order.index), df["tier_loaded"].map(order.index)
    assert (loaded <= decided).all()
    if not upgrade:
        assert (loaded == decided).all()
        assert s.dram.used_bytes <= s.dram.capacity_bytes
        assert s.ssd.used_bytes <= s.ssd.capacity_bytes


@pytest.mark.parametrize("startup_s", [0.0, 2.5])
@pytest.mark.parametrize("tier", ["dram", "ssd", "remote"])
def test_estimate_equals_simulated_startup_on_idle_cluster(tier: str, startup_s: float) -> None:
    m = fake_model("m", size_gb=12, build_s=0.3, startup_s=startup_s)
    cluster = small_cluster(servers=1, dram_gb=100, ssd_replicas=1 if tier == "ssd" else 0)
    sim = Simulator(cluster, {"m": m}, ServerlessLLMScheduler(), FixedKeepAlive(0), SimConfig())
    if tier == "dram":
        sim.servers[0].dram.insert("m", m.size_bytes)
        sim.servers[0].dirty()
    decisions: list[Decision] = []

    class Spy:
        def schedule(self, request: Request, view: ClusterView) -> Decision:
            d = ServerlessLLMScheduler().schedule(request, view)
            decisions.append(d)
            return d

    sim.life.scheduler = Spy()
    df = sim.run(requests_of([1.0], [0], ("m",), out=1)).requests
    d = decisions[0]
    assert isinstance(d, Placement)
    assert d.tier == tier
    row = df.iloc[0]
    simulated = row["queue_s"] + row["load_s"]
    assert d.estimated_startup_s == pytest.approx(simulated, rel=1e-9)
    view = sim.servers[0].view()
    expected = m.size_bytes / (view.tier_gbps(tier) * 1e9) + 0.3 + startup_s  # q = 0 once the queue drained
    assert startup_estimate_s(view, m, tier, 1e9) == pytest.approx(expected)


def test_sequential_loading_queue() -> None:
    m = {f"m{k}": fake_model(f"m{k}", size_gb=10) for k in range(2)}
    cluster = small_cluster(servers=1, ssd_replicas=1, dram_gb=0)
    sim = Simulator(cluster, m, ServerlessLLMScheduler(), FixedKeepAlive(0), SimConfig(record_events=True))
    df = sim.run(requests_of([0.0, 0.0], [0, 1], tuple(m), out=1)).requests
    loads = [e for e in sim.events if e["kind"] == "load"]
    assert loads[1]["start"] == pytest.approx(loads[0]["start"] + 2.0)  # 10 GB at 5 GB/s, one after the other
    assert df["queue_s"].tolist() == pytest.approx([0.0, 2.0])


def test_fair_sharing_of_concurrent_reads() -> None:
    m = {f"m{k}": fake_model(f"m{k}", size_gb=10) for k in range(2)}
    cluster = small_cluster(servers=1, ssd_replicas=1, dram_gb=0, load_slots=2)
    sim = Simulator(cluster, m, ServerlessLLMScheduler(), FixedKeepAlive(0), SimConfig(record_events=True))
    sim.run(requests_of([0.0, 0.0], [0, 1], tuple(m), out=1))
    loads = [e for e in sim.events if e["kind"] == "load"]
    assert [e["duration_s"] for e in loads] == pytest.approx([4.0, 4.0])  # two flows share 5 GB/s


class NoCacheScheduler:
    """A fake that loads from the best tier on server 0 and keeps no copy, so only demotion fills the
    tiers."""

    def schedule(self, request: Request, view: ClusterView) -> Decision:
        return Placement(0, view.servers[0].best_tier(request.model), cache_to=())


def test_keepalive_demotes_gpu_to_dram_to_ssd() -> None:
    m = {f"m{k}": fake_model(f"m{k}", size_gb=10) for k in range(3)}
    cluster = small_cluster(servers=1, gpus_per_server=4, dram_gb=15, ssd_gb=100, ssd_replicas=0)
    sim = Simulator(cluster, m, NoCacheScheduler(), FixedKeepAlive(5), SimConfig(record_events=True))
    sim.run(requests_of([0.0, 100.0], [0, 1], tuple(m), out=1))
    evicts = [e for e in sim.events if e["kind"] == "evict"]
    assert [e["model"] for e in evicts] == ["m0", "m1"]
    assert evicts[0]["demoted"] == [("m0", "dram")]
    # DRAM holds one 10 GB checkpoint: m1 goes to DRAM and pushes m0 down to SSD.
    assert evicts[1]["demoted"] == [("m1", "dram"), ("m0", "ssd")]
    assert evicts[0]["t"] == pytest.approx(evicts[0]["t"])
    assert "m0" in sim.servers[0].ssd
    assert "m1" in sim.servers[0].dram


def test_live_migration_rounds_and_handoff() -> None:
    """A busy best-locality server: the long request of b migrates to server 1, a starts from DRAM on server
    0."""
    a = fake_model("a", size_gb=30, gpus=1)
    b = fake_model("b", size_gb=2, gpus=1, decode_s=0.05, prefill_s=0.01)
    cluster = small_cluster(
        servers=2, gpus_per_server=1, dram_gb=40, ssd_gb=40, ssd_replicas=0, remote_gbps=0.5
    )
    sim = Simulator(
        cluster,
        {"a": a, "b": b},
        ServerlessLLMScheduler(),
        FixedKeepAlive(1000),
        SimConfig(record_events=True),
    )
    sim.servers[0].dram.insert("a", a.size_bytes)
    for s in sim.servers:
        s.dram.insert("b", b.size_bytes)
        s.dirty()
    # The long b request lands on server 0 (tie → lowest id), a short one on server 1, which then idles.
    reqs = requests_of([0.0, 0.0, 10.0], [1, 1, 0], ("a", "b"), out=[2000, 1, 1])
    df = sim.run(reqs).requests
    kinds = [e["kind"] for e in sim.events]
    assert "migration_start" in kinds
    assert "migration_done" in kinds
    rounds = [e for e in sim.events if e["kind"] == "migration_round"]
    assert len(rounds) >= 2
    assert rounds[-1]["new_tokens"] < 20 <= rounds[0]["new_tokens"]
    assert all(r2["start"] == pytest.approx(r1["end"]) for r1, r2 in itertools.pairwise(rounds))
    migrated = df[df["migrated"] > 0]
    assert len(migrated) == 1
    assert migrated["migration_s"].iloc[0] > 0
    assert df.loc[2, "tier_loaded"] == "dram"
    assert df.loc[2, "server"] == 0
    assert not df["timed_out"].any()


def test_shepherd_preempts_and_restarts() -> None:
    a = fake_model("a", size_gb=10)
    b = fake_model("b", size_gb=10)
    cluster = small_cluster(servers=1, gpus_per_server=1, ssd_replicas=1)
    sim = Simulator(
        cluster, {"a": a, "b": b}, ShepherdScheduler(), FixedKeepAlive(0), SimConfig(record_events=True)
    )
    df = sim.run(requests_of([0.0, 5.0], [0, 1], ("a", "b"), out=[1000, 1])).requests
    assert df["preempted"].tolist() == [1, 0]
    assert not df["timed_out"].any()
    assert any(e["kind"] == "preempt" for e in sim.events)


def test_timeout_when_no_gpu_frees() -> None:
    a = fake_model("a", size_gb=10)
    cluster = small_cluster(servers=1, gpus_per_server=1)
    sim = Simulator(
        cluster,
        {"a": a, "b": fake_model("b")},
        LocalityScheduler(),
        FixedKeepAlive(0),
        SimConfig(timeout_s=10),
    )
    df = sim.run(requests_of([0.0, 0.5], [0, 1], ("a", "b"), out=[5000, 1])).requests
    assert df["timed_out"].tolist() == [False, True]
    assert df.loc[1, "e2e_s"] == 10


def test_loads_cache_the_checkpoint_and_later_loads_read_it() -> None:
    m = {"a": fake_model("a", size_gb=10)}
    cluster = small_cluster(servers=1, gpus_per_server=2, dram_gb=100, ssd_replicas=0)
    sim = Simulator(cluster, m, ServerlessLLMScheduler(), FixedKeepAlive(0), SimConfig(record_events=True))
    df = sim.run(requests_of([0.0, 0.0], [0, 0], ("a",), out=1)).requests
    # Both placed from remote at t=0; the second starts after the first cached it in DRAM.
    assert df["tier_loaded"].tolist() == ["remote", "dram"]
    assert any(e["kind"] == "tier_upgrade" for e in sim.events)
    assert df.loc[1, "load_s"] == pytest.approx(0.5)


def test_same_input_same_table() -> None:
    models = {f"m{k}": fake_model(f"m{k}", size_gb=8) for k in range(3)}
    rng = np.random.default_rng(0)
    reqs = requests_of(
        np.sort(rng.uniform(0, 50, 40)).tolist(), rng.integers(0, 3, 40).tolist(), tuple(models)
    )
    frames = [
        Simulator(small_cluster(), models, ServerlessLLMScheduler(), HybridHistogramKeepAlive(), SimConfig())
        .run(reqs)
        .requests
        for _ in range(2)
    ]
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_a_fresh_cold_start_draws_its_startup_from_the_measured_ones() -> None:
    """With measured start-ups (``ModelTimes.startup_samples_s``) each simulated fresh cold start pays one of them,
    drawn with the simulator's seed: the same seed gives the same table, another seed other draws; a model without
    samples pays its ``startup_s``; other runtimes ignore the samples."""
    samples = (1.0, 4.0)
    models = {f"m{k}": fake_model(f"m{k}", size_gb=1, startup_s=2.5) for k in range(2)}
    cluster = small_cluster(servers=1, model_times={"m0": ModelTimes(startup_s=2.5, startup_samples_s=samples),
                                                    "m1": ModelTimes(startup_s=2.5)})
    n = 24
    reqs = requests_of([20.0 * i for i in range(n)], [i % 2 for i in range(n)], tuple(models), out=1)

    def run(seed: int) -> tuple[pd.DataFrame, list[tuple[str, float]]]:
        sim = Simulator(cluster, models, ServerlessLLMScheduler(), FixedKeepAlive(0), SimConfig(record_events=True),
                        seed=seed)
        df = sim.run(reqs).requests
        return df, [(e["model"], e["runtime_s"]) for e in sim.events if e["kind"] == "load"]

    df, loads = run(0)
    assert len(loads) == n  # keep-alive 0: every request is a cold start
    assert {s for m, s in loads if m == "m0"} == set(samples)
    assert {s for m, s in loads if m == "m1"} == {2.5}
    pd.testing.assert_frame_equal(df, run(0)[0])
    assert [s for m, s in run(1)[1] if m == "m0"] != [s for m, s in loads if m == "m0"]
    pool = small_cluster(servers=1, model_times=cluster.model_times,
                         runtime=RuntimeTimes("pool", handoff_s=0.05, pool_size=1, worker_start_s=1.0))
    assert pool.startup_samples_s("m0") == ()
    assert cluster.startup_samples_s("m0#3") == samples


def test_startup_samples_must_be_seconds() -> None:
    assert ModelTimes(startup_samples_s=[1, 2.5]).startup_samples_s == (1.0, 2.5)  # a config list: a tuple
    with pytest.raises(ValueError, match="startup_samples_s"):
        ModelTimes(startup_samples_s=(1.0, -0.5))


def test_hybrid_histogram_unloads_then_prewarms_before_the_next_request() -> None:
    """Regular 100 s idle gaps: once learned, an idle instance leaves the GPU at once and is pre-warmed at the
    5th percentile − 10 % (81 s), so the next request still finds it warm."""
    m = {"a": fake_model("a", size_gb=10)}
    cluster = small_cluster(servers=1, gpus_per_server=1, dram_gb=100, ssd_replicas=1)
    keep = HybridHistogramKeepAlive(bin_s=10, range_s=1000, min_samples=3, cv_threshold=0.0)
    sim = Simulator(cluster, m, ServerlessLLMScheduler(), keep, SimConfig(record_events=True))
    times = [100.0 * k for k in range(8)]
    df = sim.run(requests_of(times, [0] * 8, ("a",), out=1)).requests
    assert keep.decide("a").prewarm_s == pytest.approx(81.0)
    prewarms = [e["t"] for e in sim.events if e["kind"] == "prewarm"]
    assert prewarms, "the learned window never pre-warmed"
    done = df["e2e_s"] + df["arrival_s"]
    for t in prewarms:  # each pre-warm comes 81 s after a request finished and before the next arrives
        prev = done[done <= t].max()
        assert t == pytest.approx(prev + 81.0)
    late = df[df["arrival_s"] > prewarms[0]]
    assert len(late) > 0
    assert (late["tier_loaded"] == "gpu").all()
    assert not late["cold_start"].any()


# ---------------------------------------------------------------- storage: tier chain, estimates, policy storage


def one_server(**kw: object) -> Cluster:
    return small_cluster(**{"servers": 1, "gpus_per_server": 1, "ssd_replicas": 0, **kw})


@pytest.mark.parametrize("dram_gb", [0, 5])
def test_a_tier_that_refuses_a_checkpoint_passes_it_to_the_next(dram_gb: int) -> None:
    """Bug 1: no DRAM tier (or one smaller than the checkpoint) must not switch SSD caching off."""
    m = {"a": fake_model("a", size_gb=10)}
    sim = Simulator(one_server(dram_gb=dram_gb), m, ServerlessLLMScheduler(), FixedKeepAlive(0), SimConfig())
    df = sim.run(requests_of([0.0, 100.0], [0, 0], ("a",), out=1)).requests
    assert df["tier_loaded"].tolist() == ["remote", "ssd"]
    assert "a" in sim.servers[0].ssd
    assert "a" not in sim.servers[0].dram


def test_demotion_into_a_missing_dram_tier_lands_on_ssd() -> None:
    m = {"a": fake_model("a", size_gb=10)}
    sim = Simulator(one_server(dram_gb=0), m, NoCacheScheduler(), FixedKeepAlive(5), SimConfig(record_events=True))
    sim.run(requests_of([0.0], [0], ("a",), out=1))
    assert [e["demoted"] for e in sim.events if e["kind"] == "evict"] == [[("a", "ssd")]]


def test_cache_to_writes_through_to_every_tier_at_load() -> None:
    """Bug 1: with cache_to (dram, ssd) the SSD gets its copy when the load lands, not when DRAM evicts it."""
    m = {"a": fake_model("a", size_gb=10)}
    sim = Simulator(one_server(dram_gb=100), m, ServerlessLLMScheduler(), FixedKeepAlive(math.inf), SimConfig())
    sim.run(requests_of([0.0], [0], ("a",), out=1))
    assert "a" in sim.servers[0].dram
    assert "a" in sim.servers[0].ssd


def test_an_upgraded_load_gives_back_its_reserved_queue_time() -> None:
    """Bug 2: two remote loads reserve 10 s each; the second is upgraded to DRAM (0.5 s), so the queue drains
    at 10.5 s, not 20 s."""
    m = {"a": fake_model("a", size_gb=10)}
    sim = Simulator(one_server(gpus_per_server=2, dram_gb=100), m, ServerlessLLMScheduler(), FixedKeepAlive(0),
                    SimConfig())
    sim.run(requests_of([0.0, 0.0], [0, 0], ("a",), out=1))
    assert sim.servers[0].queue_free_at() == pytest.approx(10.5)


def test_tier_decided_and_tier_loaded_are_both_recorded() -> None:
    """Bug 4: the upgrade must not overwrite the tier the scheduler decided."""
    m = {"a": fake_model("a", size_gb=10)}
    sim = Simulator(one_server(gpus_per_server=2, dram_gb=100), m, ServerlessLLMScheduler(), FixedKeepAlive(0),
                    SimConfig())
    df = sim.run(requests_of([0.0, 0.0], [0, 0], ("a",), out=1)).requests
    assert df["tier_decided"].tolist() == ["remote", "remote"]
    assert df["tier_loaded"].tolist() == ["remote", "dram"]


def test_tier_upgrade_false_reads_the_decided_tier() -> None:
    m = {"a": fake_model("a", size_gb=10)}
    sim = Simulator(one_server(gpus_per_server=2, dram_gb=100), m, ServerlessLLMScheduler(tier_upgrade=False),
                    FixedKeepAlive(0), SimConfig())
    df = sim.run(requests_of([0.0, 0.0], [0, 0], ("a",), out=1)).requests
    assert df["tier_loaded"].tolist() == ["remote", "remote"]
    assert df.loc[1, "load_s"] == pytest.approx(10.0)


def test_prewarm_loads_and_demotions_keep_the_policys_storage() -> None:
    """Bug 3: a policy without a DRAM cache never gets one through pre-warming or keep-alive demotion."""
    m = {"a": fake_model("a", size_gb=10)}
    keep = HybridHistogramKeepAlive(bin_s=10, range_s=1000, min_samples=3, cv_threshold=0.0)
    sim = Simulator(one_server(dram_gb=100, ssd_replicas=1), m, ServerlessLLMScheduler(cache_to=("ssd",)), keep,
                    SimConfig(record_events=True))
    sim.run(requests_of([100.0 * k for k in range(8)], [0] * 8, ("a",), out=1))
    assert any(e["kind"] == "prewarm" for e in sim.events)
    assert any(e["kind"] == "evict" for e in sim.events)
    assert "a" not in sim.servers[0].dram
    assert {e["tier"] for e in sim.events if e["kind"] == "load"} == {"ssd"}


def test_migration_destination_loads_keep_the_policys_storage() -> None:
    """Bug 3: the migration destination's load writes what the policy says (here nothing), not DRAM + SSD."""
    a = fake_model("a", size_gb=30, gpus=1)
    b = fake_model("b", size_gb=2, gpus=1, decode_s=0.05, prefill_s=0.01)
    cluster = small_cluster(servers=2, gpus_per_server=1, dram_gb=40, ssd_gb=40, ssd_replicas=0, remote_gbps=0.5)
    sim = Simulator(cluster, {"a": a, "b": b}, ServerlessLLMScheduler(cache_to=()), FixedKeepAlive(1000),
                    SimConfig(record_events=True))
    sim.servers[0].dram.insert("a", a.size_bytes)
    for s in sim.servers:
        s.dram.insert("b", b.size_bytes)
        s.dirty()
    sim.run(requests_of([0.0, 0.0, 10.0], [1, 1, 0], ("a", "b"), out=[2000, 1, 1]))
    assert any(e["kind"] == "migration_done" for e in sim.events)
    assert "b" not in sim.servers[1].ssd


def test_cache_to_is_validated() -> None:
    with pytest.raises(ValueError, match=r"scheduler.cache_to=.*ordered subset"):
        ServerlessScheduler(cache_to=("ssd", "dram"))
    with pytest.raises(ValueError, match=r"scheduler.cache_to"):
        ServerlessScheduler(cache_to=("gpu",))  # type: ignore[arg-type]
    assert ServerlessScheduler(cache_to=["ssd"]).cache_to == ("ssd",)  # type: ignore[arg-type]


def test_fresh_startup_adds_exactly_startup_s_to_a_cold_start() -> None:
    """A fresh runtime pays the model's process start + imports once per cold start, inside its load."""
    results = []
    for startup_s in (0.0, 4.25):
        m = {"a": fake_model("a", size_gb=10, build_s=0.3, startup_s=startup_s)}
        sim = Simulator(one_server(ssd_replicas=1), m, ServerlessLLMScheduler(), FixedKeepAlive(0),
                        SimConfig(record_events=True))
        results.append(sim.run(requests_of([1.0], [0], ("a",), out=1)))
    base, fresh = (r.requests.iloc[0] for r in results)
    assert fresh["ttft_s"] - base["ttft_s"] == pytest.approx(4.25, abs=1e-12)
    assert fresh["load_s"] - base["load_s"] == pytest.approx(4.25, abs=1e-12)
    assert fresh["queue_s"] == base["queue_s"] == 0.0
    assert (results[0].stats["runtime_wait_s"], results[1].stats["runtime_wait_s"]) == (0.0, 4.25)
    load = next(e for e in results[1].events if e["kind"] == "load")
    assert (load["runtime_s"], load["duration_s"]) == pytest.approx((4.25, 4.25 + 2.0))  # then 10 GB at 5 GB/s


def test_a_pool_of_one_makes_the_second_cold_start_wait_for_the_replacement() -> None:
    """Pool size 1, two cold starts 0.1 s apart on one server: the first takes the ready worker (hand-off 0.5 s),
    whose replacement starts at once (``refill: on_acquire``) and is ready at 7 s; the second's load starts at
    1.5 s (the queue is sequential) and waits."""
    m = {k: fake_model(k, size_gb=5, startup_s=0.5) for k in ("a", "b")}
    pool = RuntimeTimes("pool", handoff_s=0.5, pool_size=1, worker_start_s=7.0, refill="on_acquire")
    sim = Simulator(one_server(gpus_per_server=2, ssd_replicas=1, runtime=pool), m, ServerlessScheduler(),
                    FixedKeepAlive(100), SimConfig(record_events=True))
    res = sim.run(requests_of([0.0, 0.1], [0, 1], ("a", "b"), out=1))
    loads = [e for e in res.events if e["kind"] == "load"]
    assert [e["start"] for e in loads] == pytest.approx([0.0, 1.5])
    assert [e["runtime_s"] for e in loads] == pytest.approx([0.5, 5.5 + 0.5])
    assert res.requests["load_s"].tolist() == pytest.approx([1.5, 7.0])  # 1 s of bytes each
    assert res.stats["pool_wait_s"] == pytest.approx(5.5)
    assert res.stats["runtime_wait_s"] == pytest.approx(6.5)
    assert sim.servers[0].queue_free_at() == pytest.approx(8.5)  # the wait moved the queue's estimate too


def test_with_refill_after_load_the_replacement_starts_when_the_first_load_ends() -> None:
    """The real pool's default: the first cold start is loaded at 1.5 s, its worker's replacement starts then and
    is ready at 8.5 s, so the second load (from 1.5 s) waits 7 s."""
    m = {k: fake_model(k, size_gb=5, startup_s=0.5) for k in ("a", "b")}
    pool = RuntimeTimes("pool", handoff_s=0.5, pool_size=1, worker_start_s=7.0)
    sim = Simulator(one_server(gpus_per_server=2, ssd_replicas=1, runtime=pool), m, ServerlessScheduler(),
                    FixedKeepAlive(100), SimConfig(record_events=True))
    res = sim.run(requests_of([0.0, 0.1], [0, 1], ("a", "b"), out=1))
    loads = [e for e in res.events if e["kind"] == "load"]
    assert [e["runtime_s"] for e in loads] == pytest.approx([0.5, 7.0 + 0.5])
    assert res.requests["load_s"].tolist() == pytest.approx([1.5, 8.5])
    assert res.stats["pool_wait_s"] == pytest.approx(7.0)


def test_each_server_has_its_own_pool() -> None:
    m = {k: fake_model(k, size_gb=5) for k in ("a", "b")}
    pool = RuntimeTimes("pool", handoff_s=0.0, pool_size=1, worker_start_s=7.0)
    sim = Simulator(small_cluster(servers=2, gpus_per_server=1, ssd_replicas=1, runtime=pool), m,
                    ServerlessScheduler(), FixedKeepAlive(100), SimConfig())
    res = sim.run(requests_of([0.0, 0.1], [0, 1], ("a", "b"), out=1))
    assert sorted(res.requests["server"]) == [0, 1]
    assert res.stats["pool_wait_s"] == 0.0


class SpyKeepAlive:
    """A fixed window that records every idle time it is taught."""

    demote_to: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.idle: list[tuple[str, float]] = []

    def observe_idle(self, model: str, idle_s: float) -> None:
        self.idle.append((model, idle_s))

    def decide(self, model: str) -> KeepAliveDecision:
        return KeepAliveDecision(100.0)


def test_a_model_with_a_request_still_loading_is_not_idle() -> None:
    """Keep-alive policies learn idle times: a model is idle only when none of its requests is unfinished. A (done
    at ~4 s) and B (arrived at 3 s, its cold start loading 3-5 s) overlap, so C at 4.5 s teaches nothing; D, after
    every request of the model is over, teaches the real gap."""
    m = {"a": fake_model("a", size_gb=10, decode_s=0.02, prefill_s=0.0, base_s=0.0)}
    keep = SpyKeepAlive()
    sim = Simulator(one_server(gpus_per_server=3, ssd_replicas=1, dram_gb=0), m,
                    ServerlessLLMScheduler(cache_to=(), tier_upgrade=False), keep, SimConfig(record_events=True))
    df = sim.run(requests_of([0.0, 3.0, 4.5, 30.0], [0, 0, 0, 0], ("a",), out=[101, 101, 1, 1])).requests
    assert df["cold_start"].tolist() == [True, True, False, False]  # C: A's instance, idle since ~4 s
    last_done = (df["arrival_s"] + df["e2e_s"]).iloc[:3].max()
    assert keep.idle == [("a", pytest.approx(30.0 - last_done))]


def test_a_prewarmed_instance_serves_the_request_that_waited_for_its_load() -> None:
    """Requests 100 s apart teach a pre-warm 81 s after an idle start, but the load takes 40 s, so the next request
    arrives while the only GPU is loading and waits. The instance that becomes free serves it (warm) instead of
    idling while the scheduler, asked again, evicts it for a cold start of the same model (61 s instead of 21 s)."""
    m = {"a": fake_model("a", size_gb=200)}
    keep = HybridHistogramKeepAlive(bin_s=10, range_s=1000, min_samples=3, cv_threshold=0.0)
    sim = Simulator(one_server(dram_gb=0, ssd_gb=400, ssd_replicas=1), m, ServerlessLLMScheduler(), keep,
                    SimConfig(record_events=True))
    times = [0.0] + [300.0 + 100.0 * k for k in range(7)]
    df = sim.run(requests_of(times, [0] * 8, ("a",), out=1)).requests
    prewarms = [e["t"] for e in sim.events if e["kind"] == "prewarm"]
    assert prewarms, "the learned window never pre-warmed"
    first = df[df["arrival_s"] > prewarms[0]].iloc[0]
    assert first["queue_s"] > 0  # it came during the pre-warm's load and waited
    assert not first["cold_start"]
    assert first["tier_loaded"] == "gpu"
    assert first["ttft_s"] < 40.0  # less than a load
