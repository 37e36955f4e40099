"""Each scheduling policy on hand-built cluster views (no simulator)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from harness.paths import repo_root
from schedulers.base import (
    ClusterView,
    Decision,
    InstanceView,
    Placement,
    Request,
    ServerView,
    StorageScheduler,
    Wait,
    startup_estimate_s,
)
from schedulers.knapsack import min_cost_cover
from schedulers.kserve import KServeScheduler
from schedulers.locality import LocalityScheduler
from schedulers.ray_serve import RayServeScheduler
from schedulers.serverless import ServerlessScheduler
from schedulers.serverlessllm import ServerlessLLMScheduler
from schedulers.serverlessllm_released import ServerlessLLMReleasedScheduler
from schedulers.shepherd import ShepherdScheduler
from tests.schedulers.conftest import fake_model

MODELS = {"a": fake_model("a", size_gb=20), "b": fake_model("b", size_gb=10)}
REQ = Request(0, "a", 100.0, 50, 50)


def server(
    sid: int,
    free: int = 2,
    dram: tuple[str, ...] = (),
    ssd: tuple[str, ...] = (),
    queue_at: float = 0.0,
    instances: tuple[InstanceView, ...] = (),
) -> ServerView:
    idle = sum(i.gpus for i in instances if not i.busy)
    return ServerView(
        sid, 2, free, idle, queue_at, frozenset(dram), frozenset(ssd), 20.0, 5.0, 1.0, instances
    )


def busy(iid: int, model: str, sid: int, tokens: int = 100) -> InstanceView:
    return InstanceView(
        iid,
        model,
        sid,
        1,
        True,
        request_id=iid,
        prompt_tokens=tokens,
        first_token_s=99.0,
        done_s=500.0,
        decode_s_per_token=0.05,
    )


def view(*servers: ServerView, **kw: object) -> ClusterView:
    return ClusterView(100.0, servers, MODELS, **kw)  # type: ignore[arg-type]


def test_serverlessllm_prefers_fastest_startup() -> None:
    v = view(server(0, ssd=("a",)), server(1, dram=("a",)), server(2))
    d = ServerlessLLMScheduler().schedule(REQ, v)
    assert isinstance(d, Placement)
    assert (d.server, d.tier) == (1, "dram")
    assert d.estimated_startup_s == 20e9 / 20e9


def test_serverlessllm_counts_the_loading_queue() -> None:
    v = view(server(0, dram=("a",), queue_at=110.0), server(1, ssd=("a",)))
    d = ServerlessLLMScheduler().schedule(REQ, v)
    assert isinstance(d, Placement)
    assert d.server == 1  # 10 s of queue + 1 s from DRAM > 4 s from SSD


def test_serverlessllm_migrates_off_the_best_server() -> None:
    v = view(
        server(0, free=0, dram=("a", "b"), instances=(busy(7, "b", 0), busy(8, "b", 0))),
        server(1, free=2, dram=("b",)),
    )
    d = ServerlessLLMScheduler().schedule(Request(0, "a", 100.0, 50, 50), v)
    assert isinstance(d, Placement)
    assert d.server == 0
    assert {m.instance_id for m in d.migrations} == {7}
    assert d.migrations[0].dst_server == 1
    assert ServerlessLLMScheduler(migration=False).schedule(REQ, v).server == 1  # type: ignore[union-attr]


def test_serverlessllm_waits_when_full() -> None:
    assert isinstance(ServerlessLLMScheduler().schedule(REQ, view(server(0, free=0))), Wait)


def test_released_skips_servers_without_a_copy() -> None:
    v = view(server(0, free=2), server(1, free=1, ssd=("a",)))
    d = ServerlessLLMReleasedScheduler().schedule(REQ, v)
    assert isinstance(d, Placement)
    assert (d.server, d.tier) == (1, "ssd")
    assert d.estimated_startup_s == 20e9 / 25e9  # PCIe hard-coded at 25 GB/s
    d = ServerlessLLMReleasedScheduler().schedule(REQ, view(server(0, free=1), server(1, free=2)))
    assert isinstance(d, Placement)
    assert (d.server, d.tier) == (1, "remote")


def test_serverless_ignores_locality() -> None:
    d = ServerlessScheduler().schedule(REQ, view(server(0, free=1, dram=("a",)), server(1, free=2)))
    assert isinstance(d, Placement)
    assert (d.server, d.tier) == (1, "remote")


def test_locality_waits_for_the_best_server() -> None:
    v = view(server(0, free=0, dram=("a",)), server(1, free=2))
    assert isinstance(LocalityScheduler().schedule(REQ, v), Wait)


def test_shepherd_preempts_the_least_progressed() -> None:
    v = view(server(0, free=0, dram=("a",), instances=(busy(1, "b", 0, 500), busy(2, "b", 0, 10))), server(1))
    d = ShepherdScheduler().schedule(REQ, v)
    assert isinstance(d, Placement)
    assert d.server == 0
    assert d.preemptions == (2,)


def test_ray_serve_upscale_delay() -> None:
    v = view(server(0), waiting={"a": (3, 90.0)}, instances_per_model={"a": 1})
    d = RayServeScheduler(upscale_delay_s=30).schedule(REQ, v)
    assert d == Wait(retry_at_s=120.0)
    d = RayServeScheduler(upscale_delay_s=5).schedule(REQ, v)
    assert isinstance(d, Placement)
    assert d.download_then_load
    assert d.tier == "remote"
    v0 = view(server(0, ssd=("a",)))
    d = RayServeScheduler(ssd_cache=True).schedule(REQ, v0)
    assert isinstance(d, Placement)
    assert d.tier == "ssd"


def test_kserve_always_downloads() -> None:
    d = KServeScheduler().schedule(REQ, view(server(0, dram=("a",))))
    assert isinstance(d, Placement)
    assert d.tier == "remote"
    assert d.download_then_load
    assert d.loader_gbps == 1.6


def test_knapsack_min_cost_cover() -> None:
    items = [(1, 5.0), (1, 1.0), (2, 4.0), (1, 2.0)]
    assert min_cost_cover(items, 2) == (3.0, [1, 3])
    assert min_cost_cover(items, 5) == (12.0, [0, 1, 2, 3])
    assert min_cost_cover(items, 6) is None
    assert min_cost_cover([], 0) == (0.0, [])


def test_the_docs_example_policy_works() -> None:
    """The `MyPolicyScheduler` in docs/serverless.md ("Adding a policy") runs as written on a view."""
    text = (repo_root() / "docs" / "serverless.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {
        "dataclass": dataclass,
        "Request": Request,
        "ClusterView": ClusterView,
        "Decision": Decision,
        "Placement": Placement,
        "StorageScheduler": StorageScheduler,
        "Wait": Wait,
        "startup_estimate_s": startup_estimate_s,
    }
    exec(textwrap.dedent(code), namespace)
    policy = namespace["MyPolicyScheduler"]()  # type: ignore[operator]
    d = policy.schedule(REQ, view(server(0, queue_at=130.0), server(1, ssd=("a",), queue_at=110.0)))
    assert isinstance(d, Placement)
    assert (d.server, d.tier) == (1, "ssd")
    assert (d.cache_to, d.tier_upgrade) == (("dram", "ssd"), True)  # the policy's storage rides on its decisions
    assert namespace["MyPolicyScheduler"](cache_to=("ssd",)).schedule(  # type: ignore[operator]
        REQ, view(server(1, ssd=("a",)))).cache_to == ("ssd",)
    assert isinstance(policy.schedule(REQ, view(server(0, free=0))), Wait)
