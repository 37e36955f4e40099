"""The real controller with executor=ray: instances as Ray actors; an actor that dies mid-request is detected,
its request retried, and no actor outlives the run."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from omegaconf import DictConfig

from experiments.serverless.real import build_controller
from experiments.serverless.simulated import policies_of
from harness.executors.ray import RayExecutor
from schedulers.base import Request

MODELS = ("tiny-llama#0", "tiny-llama#1")


@pytest.mark.slow
def test_ray_instances_serve_and_a_dead_actor_is_retried(ray_local: Any, compose_cfg: Callable[..., DictConfig],
                                                         tmp_path: Path) -> None:
    cfg = compose_cfg("experiment=serverless_real", f"storage.root={tmp_path / 'store'}", "progress=false",
                      "real.drain_s=0", "real.timeout_s=120", "real.decode_chunk=1", f"real.dram_root={tmp_path}")
    _, entry = policies_of(cfg)[0]
    executor = RayExecutor()
    ctl, cleanup = build_controller(cfg, entry, MODELS, tmp_path / "servers", executor)
    requests = [Request(0, MODELS[0], 0.0, 16, 120), Request(1, MODELS[1], 0.5, 8, 8)]
    killed: list[int] = []

    def kill_busy() -> None:
        deadline = time.monotonic() + 100
        while time.monotonic() < deadline:
            for inst in list(ctl.life.instances.values()):
                handle = ctl.backend.handles.get(inst.id)
                if inst.state == "busy" and inst.request == 0 and handle is not None:
                    pid = handle.pid()
                    os.kill(pid, 9)
                    killed.append(pid)
                    return
            time.sleep(0.01)

    threading.Thread(target=kill_busy, daemon=True).start()
    agents = list(ctl.sites)
    agent_types = [type(srv.agent).__name__ for srv in agents]
    try:
        reqs = ctl.run(requests)
    finally:
        cleanup()
        executor.close()
    pids = [h.pid() for h in ctl.processes.started]
    node = executor.nodes()
    assert len(node) == 1  # the loopback Ray: one node, which every server is pinned to
    assert node[0].startswith("node:")
    assert [s.node for s in ctl.sites] == node * len(ctl.sites)
    assert agent_types == ["RayWorker"] * len(agents)  # the tier agents were Ray actors on that node
    assert killed
    assert list(reqs["status"]) == ["done", "done"], reqs[["status", "error"]]
    assert reqs.loc[0, "retries"] == 1
    assert "WorkerDiedError" in reqs.loc[0, "error"]  # the reason of the retry is kept
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_ray_pool_workers_are_prestarted_actors_on_the_server_node(ray_local: Any,
                                                                   compose_cfg: Callable[..., DictConfig],
                                                                   tmp_path: Path) -> None:
    """runtime=pool on Ray: each server's pool is filled with actors before the first arrival (pinned to the
    server's node like its instances), cold starts take them without waiting, and none outlives the run."""
    from experiments.serverless.real import build_runtime

    # one server: its ready actor and the replacement started after the first load need 2 CPUs, all the loopback
    # Ray has (a pool holds its resources ahead of time; the README says so)
    cfg = compose_cfg("experiment=serverless_real", f"storage.root={tmp_path / 'store'}", "progress=false",
                      "real.drain_s=0", "real.timeout_s=120", f"real.dram_root={tmp_path}", "real.servers=1")
    _, entry = policies_of(cfg)[0]
    executor = RayExecutor()
    ctl, cleanup = build_controller(cfg, entry, MODELS, tmp_path / "servers", executor, build_runtime(cfg, "pool"))
    requests = [Request(0, MODELS[0], 0.0, 8, 4), Request(1, MODELS[1], 0.2, 8, 4)]
    try:
        reqs = ctl.run(requests)
    finally:
        cleanup()
        executor.close()
    assert list(reqs["status"]) == ["done", "done"]
    cold = ctl.cold_starts
    assert cold
    assert all(c["runtime"] == "pool" for c in cold)
    assert all(c["imports_s"] < 0.5 for c in cold)  # the actor imported torch before the cold start
    assert ctl.stats["runtime"] == "pool"
    assert ctl.stats["worker_starts"] >= len(ctl.sites)
    assert {type(h).__name__ for h in ctl.processes.started} == {"RayWorker"}
    node = executor.nodes()
    assert all(s.placement() == {node[0]: 0.001} for s in ctl.sites)  # what every pool actor asked for
    pids = [h.pid() for h in ctl.processes.started]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
