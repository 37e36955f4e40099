"""The real controller on tiny models: the simulator's columns, faults (a killed worker, a bad checkpoint,
Ctrl-C), and no orphaned processes."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.serverless.real import build_controller, run_serverless_real
from experiments.serverless.simulated import policies_of
from harness.experiment import PartialResult
from schedulers.base import Request
from schedulers.metrics import REQUEST_COLUMNS

MODELS = ("tiny-llama#0", "tiny-llama#1")


def _cfg(compose_cfg: Callable[..., DictConfig], tmp_path: Path, *extra: str) -> DictConfig:
    return compose_cfg("experiment=serverless_real", f"storage.root={tmp_path / 'store'}", "progress=false",
                       "real.drain_s=0", "real.timeout_s=90", f"real.dram_root={tmp_path}", *extra)


def _workers() -> list[psutil.Process]:
    """This process's serverless instance processes (not a pool test's or an executor test's workers)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "schedulers.real.instance:ModelInstance" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _no_workers_left(within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _workers()


def _run(cfg: DictConfig, tmp_path: Path, requests: list[Request], during: Callable[[Any], None] | None = None
         ) -> tuple[Any, list[Any]]:
    _name, entry = policies_of(cfg)[0]
    ctl, cleanup = build_controller(cfg, entry, MODELS, tmp_path / "servers", instantiate(cfg.executor))
    if during is not None:
        threading.Thread(target=during, args=(ctl,), daemon=True).start()
    try:
        reqs = ctl.run(requests)
    finally:
        cleanup()
    return ctl, reqs


@pytest.mark.slow
def test_serverless_real_writes_the_simulator_columns(compose_cfg: Callable[..., DictConfig],
                                                      tmp_path: Path) -> None:
    # with an engine (torch.compile, the eager backend: Dynamo's tracing without Inductor's code generation)
    cfg = _cfg(compose_cfg, tmp_path, "workload.duration_s=60", "workload.num_requests=3", "workload.rps=0.3",
               "real.time_scale=0.2", "engine=compiled", "engine.backend=eager",
               "workload.models=['tiny-llama#0','tiny-llama#1']")
    out = run_serverless_real(cfg, tmp_path / "run")
    req, summary, cold = out.tables["requests"], out.tables["summary"], out.tables["cold_starts"]
    assert len(req) >= 1
    assert set(REQUEST_COLUMNS) <= set(req.columns)
    assert (req["status"] == "done").all(), req[["status", "error"]]
    assert (req["ttft_s"] > 0).all()
    assert (req["e2e_s"] >= req["ttft_s"]).all()
    assert req["cold_start"].sum() == len(cold) >= 1  # each cold start has its measured phases
    assert (cold["load_s"] >= cold["weights_s"] + cold["imports_s"]).all()
    assert {"handoff_s", "imports_s", "weights_s", "model_build_s", "runtime"} <= set(cold.columns)
    # the engine's set-up steps are phases of every cold start, inside the load call
    assert (cold["engine"] == "compiled").all()
    assert (cold["kv_alloc_s"] > 0).all()
    assert (cold["compile_s"] > 0).all()
    assert (cold["graph_capture_s"] == 0).all()  # no CUDA graphs in this engine
    assert (cold["load_s"] >= cold["weights_s"] + cold["imports_s"] + cold["compile_s"]).all()
    assert summary.loc[0, "requests"] == len(req)
    assert _no_workers_left()


@pytest.mark.slow
def test_killed_worker_is_retried_elsewhere_and_the_run_continues(compose_cfg: Callable[..., DictConfig],
                                                                  tmp_path: Path) -> None:
    cfg = _cfg(compose_cfg, tmp_path, "real.decode_chunk=1")
    requests = [Request(0, MODELS[0], 0.0, 16, 120), Request(1, MODELS[1], 0.5, 8, 8)]
    killed: list[int] = []

    def kill_busy(ctl: Any) -> None:
        deadline = time.monotonic() + 80
        while time.monotonic() < deadline and not killed:
            for inst in list(ctl.life.instances.values()):
                handle = ctl.backend.handles.get(inst.id)
                if inst.state == "busy" and inst.request == 0 and handle is not None:
                    os.kill(handle.pid(), 9)
                    killed.append(inst.id)
                    return
            time.sleep(0.01)

    _ctl, reqs = _run(cfg, tmp_path, requests, kill_busy)
    assert killed
    r0, r1 = reqs.iloc[0], reqs.iloc[1]
    assert r1["status"] == "done"
    assert r0["retries"] == 1
    assert "WorkerDiedError" in r0["error"]  # the reason is kept, whether the retry then finished it or not
    assert _no_workers_left()


@pytest.mark.slow
def test_bad_checkpoint_is_reported_and_not_retried_forever(compose_cfg: Callable[..., DictConfig],
                                                            tmp_path: Path) -> None:
    cfg = _cfg(compose_cfg, tmp_path, "real.max_load_failures=1")
    _name, entry = policies_of(cfg)[0]
    ctl, cleanup = build_controller(cfg, entry, MODELS, tmp_path / "servers", instantiate(cfg.executor))
    for f in ctl.tiers.paths[MODELS[0]].iterdir():  # the SSD copies are made from it when the run starts
        if f.suffix != ".json":
            f.write_bytes(b"\0" * 10)  # truncated partitions
    requests = [Request(0, MODELS[0], 0.0, 8, 4), Request(1, MODELS[1], 0.2, 8, 4), Request(2, MODELS[0], 0.4, 8, 4)]
    try:
        reqs = ctl.run(requests)
    finally:
        cleanup()
    assert list(reqs["status"]) == ["failed", "done", "failed"], reqs[["status", "error"]]
    error = reqs.loc[0, "error"]
    assert "load failed" in error
    assert "InstanceLoadError" in error  # the instance's named error, carried back from its process
    assert "truncated" in error  # and the loader's reason
    assert ctl.stats["load_failures"] <= 2  # one per request at most, then the model is given up
    assert (reqs.loc[[0, 2], "ttft_s"] == ctl.cfg.lifecycle.timeout_s).all()  # failed requests count at the timeout
    assert _no_workers_left()


@pytest.mark.slow
def test_ctrl_c_stops_workers_and_writes_what_was_measured(compose_cfg: Callable[..., DictConfig],
                                                           tmp_path: Path) -> None:
    from omegaconf import open_dict

    cfg = _cfg(compose_cfg, tmp_path, "workload.duration_s=60", "workload.num_requests=4", "workload.rps=0.5")
    with open_dict(cfg):
        cfg.experiment.policies = [{"name": "first", "scheduler": "serverless"},
                                   {"name": "second", "scheduler": "serverless"}]

    before = {p.pid for p in _workers()}  # a previous test's workers may still be exiting: not this run's

    def interrupt() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not {p.pid for p in _workers()} - before:
            time.sleep(0.05)  # until this run's first instance process runs
        time.sleep(0.5)
        _thread.interrupt_main()

    # Ctrl-C raises KeyboardInterrupt only under Python's default handler; earlier tests (Ray) may replace it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(PartialResult) as stopped:  # the runner writes it as incomplete, then re-raises Ctrl-C
            run_serverless_real(cfg, tmp_path / "run")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert isinstance(stopped.value.cause, KeyboardInterrupt)
    out = stopped.value.result
    req, summary = out.tables["requests"], out.tables["summary"]
    assert list(summary["policy"]) == ["first"], req[["policy", "status", "error"]].to_string()  # no further policy
    assert len(req) == 4
    assert req["error"].str.contains("interrupted").any()
    assert _no_workers_left()


class MigrateFirstBusy:
    """A test policy: the first request goes to server 0; a later one waits until server 0's instance is busy,
    then takes server 0 and live-migrates that instance to server 1."""

    def schedule(self, request: Request, view: Any) -> Any:
        from schedulers.base import Migration, Placement, Wait

        s0 = view.servers[0]
        if request.request_id == 0:
            return Placement(server=0, tier=s0.best_tier(request.model))
        busy = [i for i in s0.instances if i.busy]
        if not busy:
            return Wait(retry_at_s=view.now_s + 0.1)
        return Placement(server=0, tier=s0.best_tier(request.model),
                         migrations=(Migration(busy[0].instance_id, 1),))


@pytest.mark.slow
def test_live_migration_through_the_controller_keeps_the_token_stream(compose_cfg: Callable[..., DictConfig],
                                                                      tmp_path: Path) -> None:
    from harness.executors.workers import start_worker
    from schedulers.real.instance import prompt_tokens

    cfg = _cfg(compose_cfg, tmp_path, "real.decode_chunk=1", "real.ssd_replicas=2")
    _name, entry = policies_of(cfg)[0]
    ctl, cleanup = build_controller(cfg, entry, MODELS, tmp_path / "servers", instantiate(cfg.executor))
    ctl.life.scheduler = MigrateFirstBusy()
    requests = [Request(0, MODELS[0], 0.0, 16, 6000), Request(1, MODELS[1], 0.3, 8, 4)]  # long enough to migrate
    try:
        reqs = ctl.run(requests)
    finally:
        cleanup()
    r0, r1 = reqs.iloc[0], reqs.iloc[1]
    assert r1["status"] == "done"
    assert r0["status"] == "done", r0["error"]
    assert r0["migrated"] == 1
    assert ctl.stats["migrations"] == 1
    assert r1["server"] == 0
    ref = start_worker(instantiate(cfg.executor), "schedulers.real.instance:ModelInstance",
                       {"model": ctl.tiers.model_cfg(MODELS[0])}, name="ref")
    try:
        ref.call("load", str(ctl.tiers.paths[MODELS[0]]), ctl.tiers.loader_base | {"dram_dir": None}, timeout_s=120)
        prompt = prompt_tokens(0, 16, ctl.tiers.vocab_size(MODELS[0]))
        expected = ref.call("begin", 0, prompt)["tokens"] + ref.call("step", 0, 5999)["tokens"]
    finally:
        ref.close()
    assert ctl.tokens[0] == expected
    assert _no_workers_left()
