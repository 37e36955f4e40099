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
            for inst in list(ctl.instances.values()):
                if inst.state == "busy" and inst.request == 0 and inst.handle is not None:
                    pid = inst.handle.pid()
                    os.kill(pid, 9)
                    killed.append(pid)
                    return
            time.sleep(0.01)

    threading.Thread(target=kill_busy, daemon=True).start()
    agents = list(ctl.servers)
    agent_types = [type(srv.agent).__name__ for srv in agents]
    try:
        reqs = ctl.run(requests)
    finally:
        cleanup()
        executor.close()
    pids = [h.pid() for h in ctl._handles]
    node = executor.nodes()
    assert len(node) == 1  # the loopback Ray: one node, which every server is pinned to
    assert node[0].startswith("node:")
    assert [s.node for s in ctl.servers] == node * len(ctl.servers)
    assert agent_types == ["RayWorker"] * len(agents)  # the tier agents were Ray actors on that node
    assert killed
    assert reqs[1].state == "done"
    assert reqs[0].retries == 1
    assert reqs[0].state == "done"
    assert "WorkerDiedError" in reqs[0].error  # the reason of the retry is kept
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
