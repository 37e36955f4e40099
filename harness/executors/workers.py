"""Long-lived workers: one object of a ``module:Class`` hosted in its own process, called by RPC.

The seam every executor offers besides ``run_trial`` (one cold start in a fresh process)::

    from harness.executors.workers import start_worker

    w = start_worker(executor, "schedulers.real.instance:ModelInstance", {"model": ...},
                     name="gpu0", num_cpus=1, memory_bytes=2 << 30, env={"FOO": "1"})
    w.call("load", ckpt_dir, timeout_s=60)        # blocking; returns the method's result
    fut = w.submit("generate", tokens, 32)        # a concurrent.futures.Future
    fut.result(timeout=30)
    w.alive()                                     # False once the process / actor is gone
    w.close()                                     # asks the object to stop, then ends the process
    w.kill()                                      # ends it at once (SIGKILL of its process group / ray.kill)

``executor`` is an executor object (``LocalExecutor``, ``RayExecutor``: anything with ``start_worker``) or its
Hydra config (``cfg.executor``), instantiated here. Failures are named:

- ``WorkerCallError``: the method raised in the worker; ``remote_type`` and ``remote_traceback`` carry the
  worker-side exception and its traceback (a ``str``), and ``str(exc)`` ends with that traceback.
- ``WorkerDiedError``: the process or actor is gone (killed, crashed, out of memory budget); pending and
  later calls fail with it, naming the exit code / cause and the tail of the worker's stderr.
- ``WorkerTimeoutError``: ``call(..., timeout_s=...)`` got no answer in time (the worker keeps running).

Budgets: ``num_cpus`` sets the worker's thread budget (``torch.set_num_threads``, ``OMP_NUM_THREADS``) and, on
Ray, the actor's CPU resource; ``memory_bytes`` is enforced locally by a watchdog on the process tree's RSS
(the worker is killed and reported as over budget) and is the actor's ``memory`` resource on Ray;
``num_gpus`` / ``resources`` (e.g. ``{"gpu_slot": 1}``) place Ray actors; locally they are recorded only.
The hosted object's methods run one at a time (``max_concurrency=1``) unless asked otherwise; results and
arguments travel by pickle, so keep them plain (lists, dicts, tensors).
"""

from __future__ import annotations

import importlib
import os
import traceback
from concurrent.futures import Future
from typing import Any, Protocol, runtime_checkable


class WorkerError(RuntimeError):
    """Base of the worker failures."""


class WorkerCallError(WorkerError):
    """A method raised inside the worker; carries the remote exception type and traceback."""

    def __init__(self, worker: str, method: str, remote_type: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"worker {worker!r}: {method}() raised {remote_type}: {message}\n"
                         f"--- remote traceback ---\n{remote_traceback}")
        self.worker, self.method = worker, method
        self.remote_type, self.remote_message, self.remote_traceback = remote_type, message, remote_traceback


class WorkerDiedError(WorkerError):
    """The worker's process or actor is gone; the message names why (exit code, signal, budget) and its stderr."""


class WorkerTimeoutError(WorkerError, TimeoutError):
    """A blocking call waited past its ``timeout_s``."""


def call_with_timeout(name: str, method: str, fut: Future[Any], timeout_s: float | None) -> Any:
    """``fut``'s result, or ``WorkerTimeoutError`` naming the worker and method after ``timeout_s`` (both handles'
    blocking ``call`` is ``submit`` plus this)."""
    try:
        return fut.result(timeout=timeout_s)
    except TimeoutError:
        if fut.done():
            return fut.result()
        raise WorkerTimeoutError(f"worker {name!r}: {method}() gave no answer in {timeout_s:g} s") from None


@runtime_checkable
class WorkerHandle(Protocol):
    """A live worker hosting one object; see the module docstring."""

    name: str

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any: ...

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]: ...

    def alive(self) -> bool: ...

    def pid(self) -> int | None: ...

    def kill(self) -> None: ...

    def close(self, timeout_s: float = 10.0) -> None: ...


def start_worker(executor: Any, target: str, kwargs: dict[str, Any] | None = None, *, name: str,
                 num_cpus: float = 1, memory_bytes: int | None = None, env: dict[str, str] | None = None,
                 num_gpus: float = 0, resources: dict[str, float] | None = None,
                 max_concurrency: int = 1) -> WorkerHandle:
    """Start ``target`` (``"module:Class"``) with ``kwargs`` in a worker of ``executor`` (object or config)."""
    parse_target(target)
    if num_cpus <= 0:
        raise ValueError(f"num_cpus={num_cpus}; need > 0")
    if memory_bytes is not None and memory_bytes <= 0:
        raise ValueError(f"memory_bytes={memory_bytes}; need > 0 or None")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency={max_concurrency}; need >= 1")
    if isinstance(executor, dict) or (hasattr(executor, "_target_") and not hasattr(executor, "start_worker")):
        from hydra.utils import instantiate  # an executor config (the ``executor`` group's node)

        executor = instantiate(executor)
    if not callable(getattr(executor, "start_worker", None)):
        raise TypeError(f"{type(executor).__name__} cannot host workers (it has no start_worker)")
    handle: WorkerHandle = executor.start_worker(
        target, dict(kwargs or {}), name=name, num_cpus=num_cpus, memory_bytes=memory_bytes, env=env,
        num_gpus=num_gpus, resources=resources, max_concurrency=max_concurrency)
    return handle


def parse_target(target: str) -> tuple[str, str]:
    """``"pkg.mod:Class"`` → (module, attribute); anything else is a ValueError naming the form."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"target={target!r}; expected 'package.module:Class'")
    return module, attr


def build_target(target: str, kwargs: dict[str, Any]) -> Any:
    """Import and construct the hosted object (runs inside the worker)."""
    module, attr = parse_target(target)
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(**kwargs)


def apply_thread_budget(num_cpus: float) -> None:
    """Inside a worker: cap torch's intra-op threads at the CPU budget (at least one)."""
    threads = max(1, int(num_cpus))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a worker that hosts no torch code
        pass


def thread_env(num_cpus: float) -> dict[str, str]:
    """Environment that caps native thread pools at the CPU budget before they start."""
    n = str(max(1, int(num_cpus)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def invoke(obj: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
    """Call ``obj.method``; ("ok", result) or ("err", (type, message, traceback)) — never raises."""
    try:
        if method.startswith("_") and method != "__worker_ping__":
            raise AttributeError(f"private method {method!r} is not callable remotely")
        if method == "__worker_ping__":
            return "ok", os.getpid()
        return "ok", getattr(obj, method)(*args, **kwargs)
    except BaseException as exc:  # carried back to the caller, with its traceback
        return "err", (type(exc).__name__, str(exc), traceback.format_exc())
