"""The real controller's policy paths that need no process boundary, with instances hosted in this process
(``tests/schedulers/inprocess.py``): Shepherd's preemption restarts the victim's request with the same tokens,
and the hybrid histogram's pre-warming unloads an idle instance and loads it again before the next request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from experiments.serverless.real import build_controller
from experiments.serverless.simulated import policies_of
from schedulers.base import Request
from tests.schedulers.inprocess import InProcessExecutor

MODELS = ("tiny-llama#0", "tiny-llama#1")


def _run(compose_cfg: Callable[..., DictConfig], tmp_path: Path, requests: list[Request], *overrides: str,
         delay_s: dict[str, float] | None = None, nodes: list[str] | None = None, progress: bool = False
         ) -> tuple[Any, list[Any], InProcessExecutor]:
    cfg = compose_cfg("experiment=serverless_real", f"storage.root={tmp_path / 'store'}", "progress=false",
                      "real.drain_s=0", "real.timeout_s=60", f"real.dram_root={tmp_path}", "real.servers=1",
                      "real.decode_chunk=1", *overrides)
    _name, entry = policies_of(cfg)[0]
    executor = InProcessExecutor(delay_s, nodes)
    ctl, cleanup = build_controller(cfg, entry, MODELS, tmp_path / "servers", executor)
    try:
        reqs = ctl.run(requests, progress=progress)
    finally:
        cleanup()
        executor.close()
    return ctl, reqs, executor


def _states(reqs: Any) -> list[tuple[str, str]]:
    return list(zip(reqs["status"], reqs["error"], strict=True))


def test_the_replay_shows_its_progress(compose_cfg: Callable[..., DictConfig], tmp_path: Path,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    requests = [Request(0, MODELS[0], 0.0, 8, 2), Request(1, MODELS[1], 1.5, 8, 2)]
    _ctl, reqs, _ = _run(compose_cfg, tmp_path / "shown", requests, progress=True)
    assert list(reqs["status"]) == ["done", "done"], _states(reqs)
    bar = capfd.readouterr().err
    assert "replay" in bar, bar
    assert "2/2" in bar, bar
    _run(compose_cfg, tmp_path / "quiet", requests)
    assert "replay" not in capfd.readouterr().err


def test_shepherd_preempts_a_running_request_which_restarts_with_the_same_tokens(
        compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    slow = {"step": 0.02}  # 100 decode steps ≈ 2 s, so the second model's request arrives mid-decode
    long_req = Request(0, MODELS[0], 0.0, 8, 100)
    alone_ctl, _, _ = _run(compose_cfg, tmp_path / "alone", [long_req], "scheduler=shepherd", delay_s=slow)
    ctl, reqs, executor = _run(compose_cfg, tmp_path / "both", [long_req, Request(1, MODELS[1], 1.0, 8, 4)],
                               "scheduler=shepherd", delay_s=slow)
    r0, r1 = reqs.iloc[0], reqs.iloc[1]
    assert list(reqs["status"]) == ["done", "done"], _states(reqs)
    assert ctl.stats["preemptions"] == 1
    assert r0["preempted"] == 1
    assert r1["preempted"] == 0
    assert r1["arrival_s"] + r1["e2e_s"] < r0["arrival_s"] + r0["ttft_s"]  # the newcomer ran on the slot taken
    assert ctl.tokens[0] == alone_ctl.tokens[0]  # restarted from scratch: the same greedy stream, all 100 tokens
    assert len(ctl.tokens[0]) == 100
    assert ctl.stats["loads"] == 3  # the first model, the second (in the freed slot), the first again
    killed = [w for name, _, w in executor.started if not w.alive()]
    assert len(killed) == len(executor.started)  # every instance was stopped at the end


@pytest.mark.slow
def test_hybrid_histogram_prewarms_an_unloaded_instance_before_the_next_request(
        compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    # Requests every 4 s: idle times ≈ 3.9 s fall in the 1-s bin 3 of 10, so after two of them the policy
    # answers pre-warm 3 × 0.9 = 2.7 s and keep-alive 4 × 1.1 = 4.4 s; before that, the 30-s fallback window.
    ka = ["keepalive=hybrid_histogram", "keepalive.bin_s=1", "keepalive.range_s=10", "keepalive.min_samples=2",
          "keepalive.default_keep_alive_s=30"]
    requests = [Request(i, MODELS[0], 4.0 * i, 8, 4) for i in range(4)]
    ctl, reqs, executor = _run(compose_cfg, tmp_path, requests, *ka)
    assert list(reqs["status"]) == ["done"] * 4, _states(reqs)
    assert list(reqs["cold_start"]) == [True, False, False, False]
    assert ctl.stats["prewarms"] >= 1
    assert ctl.stats["loads"] == 1 + ctl.stats["prewarms"]  # every load after the first was a pre-warm
    assert len(executor.started) == ctl.stats["loads"]
    prewarmed = [c for c in ctl.cold_starts if c["instance"] != ctl.cold_starts[0]["instance"]]
    assert prewarmed
    assert all(c["load_start_s"] < 12.0 for c in prewarmed[:1])  # loaded before the fourth request arrived


def test_each_server_its_instances_and_its_tier_agent_are_pinned_to_one_node(
        compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    nodes = ["node:10.0.0.1", "node:10.0.0.2"]
    requests = [Request(0, MODELS[0], 0.0, 8, 4), Request(1, MODELS[1], 0.1, 8, 4)]
    ctl, reqs, executor = _run(compose_cfg, tmp_path, requests, "real.servers=2", nodes=nodes)
    assert list(reqs["status"]) == ["done", "done"], _states(reqs)
    assert [s.node for s in ctl.sites] == nodes  # round-robin over the executor's nodes
    assert executor.resources["tiers-server0"] == {nodes[0]: 0.001}  # file operations run on the node
    assert executor.resources["tiers-server1"] == {nodes[1]: 0.001}
    instances = {name: res for name, res in executor.resources.items() if not name.startswith("tiers-")}
    assert len(instances) == 2
    for name, res in instances.items():  # "s{server}-i{instance}-{model}"
        assert res == {nodes[int(name.split("-")[0][1:])]: 0.001}, name
    assert {c["server"] for c in ctl.cold_starts} == {0, 1}  # both servers loaded, so both pins were used


def test_pool_workers_serve_cold_starts_and_one_killed_mid_load_is_replaced_and_retried(
        compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """runtime=pool: the pool is filled before the first arrival (warmed workers: their kwargs name the models to
    pre-import); a worker killed while it loads is discarded, a fresh one loads instead (the request still gets its
    first token), its replacement starts once that load is done, and every worker is stopped at the end."""
    import threading
    import time

    from experiments.serverless.real import build_runtime

    cfg = compose_cfg("experiment=serverless_real", f"storage.root={tmp_path / 'store'}", "progress=false",
                      "real.drain_s=0", "real.timeout_s=60", f"real.dram_root={tmp_path}", "real.servers=1",
                      "real.decode_chunk=1")
    _name, entry = policies_of(cfg)[0]
    executor = InProcessExecutor({"load": 0.5})
    ctl, cleanup = build_controller(cfg, entry, MODELS, tmp_path / "servers", executor, build_runtime(cfg, "pool"))
    killed: list[str] = []

    def kill_first_loading() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            for inst in list(ctl.life.instances.values()):
                handle = ctl.backend.handles.get(inst.id)
                if inst.state == "loading" and handle is not None:
                    killed.append(handle.name)
                    handle.kill()
                    return
            time.sleep(0.01)

    threading.Thread(target=kill_first_loading, daemon=True).start()
    try:
        reqs = ctl.run([Request(0, MODELS[0], 0.0, 8, 2)])
    finally:
        cleanup()
        executor.close()
    assert list(reqs["status"]) == ["done"], _states(reqs)
    assert killed
    assert ctl.stats["load_retries"] == 1
    assert ctl.stats["workers_discarded"] == 1
    (cold,) = ctl.cold_starts
    assert cold["runtime"] == "pool"
    assert cold["retried"] == 1
    assert cold["imports_s"] < 0.5  # the worker that loaded had imported ahead
    first_kwargs = executor.started[0][1]
    assert first_kwargs["models"]  # pool workers pre-import the run's architectures
    assert first_kwargs["warmup_dtype"] == "fp32"
    assert all(not w.alive() for _, _, w in executor.started)
