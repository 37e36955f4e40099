"""Shared by the runtime tests: trial specs on tiny checkpoints, runtime contexts, and the processes a test started."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from harness.checkpoints import Checkpoint, CheckpointStore
from harness.config import option_dict
from harness.executors.local import LocalExecutor
from runtimes.base import RuntimeContext
from tests.conftest import model_spec

ZYGOTE = "runtimes.zygote"
# a pool worker's command line names its object; a serverless instance process (ModelInstance) or an executor test's
# worker is not one
POOL_WORKER = "runtimes.worker:TrialWorker"
MARKS = ["spawn", "handoff", "imports", "device_init", "weights", "model_build", "first_token"]
FORMAT = {"safetensors": "safetensors", "torch_mmap": "torch_bin", "native": "native"}


def checkpoint(store: CheckpointStore, model: str, loader: str = "safetensors") -> Checkpoint:
    return store.ensure(model_spec(model), "fp16", FORMAT[loader], progress=False)


def trial_spec(store: CheckpointStore, model: str = "tiny-opt", loader: str = "safetensors",
               loader_cfg: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """What the loading experiment hands a runtime: a ``conf/loader`` option (or a test-only ``loader_cfg``), the
    model's option, a checkpoint written in ``store``."""
    ckpt = checkpoint(store, model, loader)
    return {"loader": loader_cfg or option_dict("loader", loader), "model": option_dict("model", model),
            "checkpoint": str(ckpt.path), "dtype": "fp16", "device": device, "prompt_tokens": 8, "verify": True,
            "threads": None, "manifest_dir": None}


def context(loaders: Iterable[str] = ("safetensors",), models: Iterable[str] = ("tiny-opt",),
            device: str = "cpu", extra_loaders: Iterable[dict[str, Any]] = ()) -> RuntimeContext:
    """A runtime context as ``run_cell`` builds it: a local executor, the run's loader and model configs."""
    return RuntimeContext(LocalExecutor(), device, [option_dict("loader", n) for n in loaders] + list(extra_loaders),
                          [option_dict("model", m) for m in models])


def descendants(needle: str) -> set[int]:
    """Pids of this process's descendants (recursively) whose command line contains ``needle``."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and needle in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.Error:
            continue
    return out


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: Iterable[int], within_s: float = 10.0) -> set[int]:
    """The pids among ``pids`` still running after ``within_s`` (empty when all went)."""
    pids = set(pids)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = {p for p in pids if running(p)}
        if not left:
            return set()
        time.sleep(0.05)
    return {p for p in pids if running(p)}


def read_pids(path: Path, within_s: float = 120.0) -> list[int]:
    """The pids a fake loader wrote to ``path``, once it has written them."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            text = path.read_text().split()
            if text:
                return [int(t) for t in text]
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise TimeoutError(f"nothing was written to {path} in {within_s:g} s")
