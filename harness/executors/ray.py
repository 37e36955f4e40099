"""Trials and long-lived workers on a Ray cluster: a trial is a Ray task that spawns a fresh interpreter on the
node Ray picked; a worker is one Ray actor placed by its resources (CPUs, GPUs, a custom ``gpu_slot``)."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any

from harness.executors.base import TrialError
from harness.executors.workers import (
    WorkerCallError,
    WorkerDiedError,
    apply_thread_budget,
    build_target,
    call_with_timeout,
    invoke,
    thread_env,
)
from harness.raycluster import ray_session


class RayExecutor:
    """Joins ``address`` (``auto``, ``ray://host:port``) or starts a loopback-only local Ray with ``num_cpus``
    on first use, and shuts down only what it started on ``close()``."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, trial_num_cpus: float = 1,
                 namespace: str = "coldstart", python: str | None = None) -> None:
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"executor.num_cpus={num_cpus}; need >= 1 or null (all of this machine)")
        if trial_num_cpus <= 0:
            raise ValueError(f"executor.trial_num_cpus={trial_num_cpus}; need > 0")
        self.address, self.num_cpus, self.trial_num_cpus = address, num_cpus, trial_num_cpus
        self.namespace, self.python = namespace, python
        self._stack: contextlib.ExitStack | None = None
        self._ray: Any = None
        self._lock = threading.Lock()
        self._workers: list[RayWorker] = []

    @property
    def ray(self) -> Any:
        """The connected ``ray`` module (connecting or starting Ray on first use)."""
        with self._lock:
            if self._ray is None:
                stack = contextlib.ExitStack()
                self._ray = stack.enter_context(ray_session(self.address, self.num_cpus, self.namespace))
                self._stack = stack
            return self._ray

    def connect(self) -> None:
        """Connect (or start Ray) now, from the calling thread: ``ray.init`` must run in the main thread."""
        self.ray  # noqa: B018 - the property connects

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One cold start in a fresh interpreter on a Ray node (the task runs ``harness.trial`` as a subprocess,
        so the trial pays the same interpreter start as a local one)."""
        if timeout_s <= 0:
            raise ValueError(f"trial_timeout_s must be > 0, got {timeout_s}")
        ray = self.ray
        task = ray.remote(_trial_task).options(num_cpus=self.trial_num_cpus, max_retries=0)
        try:
            return dict(ray.get(task.remote(spec, timeout_s, self.python), timeout=timeout_s + 60))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            raise TrialError(str(cause.args[0]) if isinstance(cause, TrialError) and cause.args else str(exc)) \
                from None
        except (ray.exceptions.GetTimeoutError, ray.exceptions.WorkerCrashedError) as exc:
            raise TrialError(f"ray trial task failed: {exc}") from None

    def nodes(self) -> list[str]:
        """Each alive node's ``node:IP`` resource, sorted: asking a worker for 0.001 of one pins it to that node."""
        names = {k for n in self.ray.nodes() if n.get("Alive") for k in n.get("Resources", {})
                 if k.startswith("node:") and k != "node:__internal_head__"}
        return sorted(names)

    def start_worker(self, target: str, kwargs: dict[str, Any], *, name: str, num_cpus: float = 1,
                     memory_bytes: int | None = None, env: dict[str, str] | None = None, num_gpus: float = 0,
                     resources: dict[str, float] | None = None, max_concurrency: int = 1) -> RayWorker:
        """One actor hosting ``target``, placed by Ray on a node with the resources asked for."""
        worker = RayWorker(self.ray, target, kwargs, name=name, num_cpus=num_cpus, memory_bytes=memory_bytes,
                           env=env, num_gpus=num_gpus, resources=resources, max_concurrency=max_concurrency)
        self._workers.append(worker)
        return worker

    def close(self) -> None:
        """Kill this executor's actors and shut down a Ray this executor started."""
        for w in self._workers:
            w.kill()
        self._workers.clear()
        with self._lock:
            if self._stack is not None:
                self._stack.close()
            self._stack, self._ray = None, None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _trial_task(spec: dict[str, Any], timeout_s: float, python: str | None) -> dict[str, Any]:
    from harness.executors.local import LocalExecutor

    return LocalExecutor(python=python).run_trial(spec, timeout_s)


class _Host:
    """The actor body: builds the hosted object in the actor's process and relays calls to it."""

    def __init__(self, target: str, kwargs: dict[str, Any], num_cpus: float) -> None:
        apply_thread_budget(num_cpus)
        self.obj: Any = None
        self.init_error: tuple[str, Any] | None = None
        try:
            self.obj = build_target(target, kwargs)
        except BaseException as exc:  # reported on the first call, with its traceback
            self.init_error = ("err", (type(exc).__name__, str(exc), traceback.format_exc()))

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        if self.init_error is not None:
            return self.init_error
        if method == "__worker_ping__":
            import os

            return "ok", os.getpid()
        return invoke(self.obj, method, args, kwargs)

    def shutdown(self) -> None:
        if self.obj is not None and callable(getattr(self.obj, "close", None)):
            self.obj.close()


class RayWorker:
    """Handle of one actor (see ``harness.executors.workers`` for the API)."""

    def __init__(self, ray: Any, target: str, kwargs: dict[str, Any], *, name: str, num_cpus: float,
                 memory_bytes: int | None, env: dict[str, str] | None, num_gpus: float,
                 resources: dict[str, float] | None, max_concurrency: int, start_timeout_s: float = 300.0) -> None:
        self.name, self._ray = name, ray
        opts: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": 0, "max_task_retries": 0,
                                "max_concurrency": max_concurrency,
                                "runtime_env": {"env_vars": {**thread_env(num_cpus), **(env or {}),
                                                             "COLDSTART_WORKER_NAME": name}}}
        if num_gpus:
            opts["num_gpus"] = num_gpus
        if memory_bytes is not None:
            opts["memory"] = int(memory_bytes)
        if resources:
            opts["resources"] = dict(resources)
        self._actor = ray.remote(_Host).options(**opts).remote(target, kwargs, num_cpus)
        self._dead_reason: str | None = None
        self._pid: int | None = None
        try:
            self._pid = int(self.call("__worker_ping__", timeout_s=start_timeout_s))
        except BaseException:
            self.kill()  # an actor that could not build its object is not left running
            raise

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        out: Future[Any] = Future()
        if self._dead_reason is not None:
            out.set_exception(WorkerDiedError(self._dead_reason))
            return out
        inner = self._actor.call.remote(method, args, kwargs).future()

        def relay(f: Future[Any]) -> None:
            try:
                status, payload = f.result()
            except Exception as exc:
                out.set_exception(self._died(exc, method))
                return
            if status == "ok":
                out.set_result(payload)
            else:
                out.set_exception(WorkerCallError(self.name, method, *payload))

        inner.add_done_callback(relay)
        return out

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return call_with_timeout(self.name, method, self.submit(method, *args, **kwargs), timeout_s)

    def alive(self) -> bool:
        if self._dead_reason is not None:
            return False
        try:
            self._ray.get(self._actor.call.remote("__worker_ping__", (), {}), timeout=10)
        except Exception as exc:
            self._died(exc, "__worker_ping__")
            return False
        return True

    def pid(self) -> int | None:
        return self._pid

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self._actor, no_restart=True)
        self._dead_reason = self._dead_reason or f"worker {self.name!r} (actor) was killed"

    def close(self, timeout_s: float = 10.0) -> None:
        if self._dead_reason is None:
            with contextlib.suppress(Exception):
                self._ray.get(self._actor.shutdown.remote(), timeout=timeout_s)
        self.kill()
        # the actor's process exits asynchronously; give it a moment so callers see no stragglers
        deadline = time.monotonic() + timeout_s
        while self._pid is not None and _pid_alive(self._pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _died(self, exc: BaseException, method: str) -> WorkerDiedError:
        if self._dead_reason is None:
            self._dead_reason = f"worker {self.name!r} (actor, pid {self._pid}) died: {type(exc).__name__}: " \
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return WorkerDiedError(f"{self._dead_reason} (during {method}())")


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
