"""The ``pool`` runtime: N pre-started workers (imports done, device context created) each take one cold start,
then are reused only if their memory came back after unload, else recycled. Works on CUDA (no fork).

With ``prepare_engines``, each worker holds a prepared engine per architecture of the run; a cold start that none
of them fits (another architecture, another engine, int8) takes a worker started for it alone, so a prepared
worker's compiled state is never disturbed and the start pays what an unprepared one costs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from harness.executors.base import TrialError
from harness.executors.workers import WorkerDiedError, WorkerError, WorkerTimeoutError, start_worker
from harness.trial import prepared_key
from runtimes.base import RuntimeContext, RuntimeUnsupportedError
from runtimes.warm import BASE_MODULES, arena_size, modules_of, prepared_keys, ring_size
from runtimes.workerpool import PoolError, WorkerPool

WORKER = "runtimes.worker:TrialWorker"
RECYCLE = ("always", "rss", "never")
REFILL = ("after_load", "on_acquire")


def reusable(worker: dict[str, Any], recycle: str, rss_tolerance: float, max_uses: int) -> bool:
    """May a worker that reported ``worker`` (idle and after-unload RSS, uses) take another assignment?

    ``always``: never reused (no state can leak between models); ``rss``: reused while its RSS after unload is
    within ``rss_tolerance`` of its idle RSS; ``never``: reused regardless. ``max_uses`` > 0 caps the uses.
    """
    if recycle == "always":
        return False
    if max_uses and int(worker.get("uses", 0)) >= max_uses:
        return False
    if recycle == "never":
        return True
    if worker.get("idle_rss_bytes") is None or worker.get("rss_after_unload_bytes") is None:
        return False  # no idle baseline to compare with
    idle, after = float(worker["idle_rss_bytes"]), float(worker["rss_after_unload_bytes"])
    return after <= idle * (1.0 + rss_tolerance)


class PoolRuntime:
    """A :class:`~runtimes.workerpool.WorkerPool` of ``runtimes.worker:TrialWorker`` processes (or Ray actors)."""

    name = "pool"

    def __init__(self, size: int = 1, recycle: str = "rss", rss_tolerance: float = 0.05, max_uses: int = 0,
                 preimport: list[str] | None = None, preimport_run: bool = True, retries: int = 1,
                 start_timeout_s: float = 300.0, wait_full: bool = True, warmup: bool = True,
                 prebuild: bool = True, refill: str = "after_load", arena: bool = True,
                 prepare_engines: bool = False) -> None:
        if int(size) < 1:
            raise ValueError(f"runtime.size={size}; a pool needs at least one worker")
        if recycle not in RECYCLE:
            raise ValueError(f"runtime.recycle={recycle!r}; choose one of {RECYCLE}")
        if not 0 <= float(rss_tolerance) < 1:
            raise ValueError(f"runtime.rss_tolerance={rss_tolerance}; it must be in [0, 1)")
        if int(max_uses) < 0 or int(retries) < 0:
            raise ValueError(f"runtime.max_uses={max_uses}, runtime.retries={retries}; both must be ≥ 0")
        self.size, self.recycle, self.rss_tolerance = int(size), recycle, float(rss_tolerance)
        self.max_uses, self.retries, self.start_timeout_s = int(max_uses), int(retries), float(start_timeout_s)
        self.preimport = list(BASE_MODULES if preimport is None else preimport)
        self.preimport_run, self.wait_full, self.warmup = preimport_run, bool(wait_full), bool(warmup)
        self.prebuild = bool(prebuild)
        self.prepare_engines = bool(prepare_engines)
        if self.prepare_engines and not self.prebuild:
            raise ValueError("runtime.prepare_engines=true needs runtime.prebuild=true (an engine is prepared for a "
                             "built architecture)")
        if refill not in REFILL:
            raise ValueError(f"runtime.refill={refill!r}; choose one of {REFILL}")
        self.refill = refill
        self.arena = bool(arena)
        self.pool: WorkerPool | None = None
        self.retried = 0
        self.fresh_starts = 0  # cold starts no prepared engine fitted, each on a worker of its own
        self._prepared: set[str] = set()  # the engine keys every worker prepared
        self._start_fresh: Callable[[str], Any] | None = None

    def host_kwargs(self, ctx: RuntimeContext) -> dict[str, Any]:
        """What each worker imports and initializes at start (``runtimes.worker.TrialWorker``'s arguments, and
        ``ModelInstance``'s when the pool hosts serverless instances)."""
        modules = list(self.preimport)
        models: list[dict[str, Any]] = []
        if self.preimport_run:
            modules += [m for m in modules_of(ctx.loaders) if m not in modules]
            models = list(ctx.models)
        kwargs: dict[str, Any] = {"device": ctx.device, "modules": modules, "models": models, "threads": ctx.threads,
                                  "warmup_dtype": ctx.dtype if self.warmup and models else None,
                                  "prebuild_dtype": ctx.dtype if self.prebuild and models else None}
        if self.arena:  # sized for the largest model the pool serves; faulted in (pinned) at each worker's start
            kwargs["arena_bytes"] = arena_size(ctx.models, ctx.dtype)
            kwargs["arena_ring_bytes"] = ring_size(ctx.loaders)
        if self.prepare_engines and not ctx.engines:
            raise RuntimeUnsupportedError("runtime.prepare_engines=true: this run lists no engines to prepare (the "
                                          "loading experiment's engines=[...]); set it false here")
        if self.prepare_engines and models:
            kwargs.update({"engines": list(ctx.engines), "prompt_ids": list(ctx.prompt_ids),
                           "decode_tokens": ctx.decode_tokens})
        return kwargs

    def check(self, ctx: RuntimeContext) -> None:
        """Pre-started processes (not forks) serve every device."""

    def start(self, ctx: RuntimeContext) -> None:
        if self.pool is not None:
            return
        kwargs = self.host_kwargs(ctx)
        num_gpus = 1 if ctx.device.startswith("cuda") else 0

        # the thread budget of a fresh trial: trial_threads, else torch's default (every core)
        cpus = ctx.threads or os.cpu_count() or 1

        def start_one(name: str) -> Any:
            return start_worker(ctx.executor, WORKER, kwargs, name=name, num_cpus=cpus, num_gpus=num_gpus)

        if "engines" in kwargs:
            self._prepared = prepared_keys(kwargs["models"], kwargs["engines"], ctx.dtype, ctx.device,
                                           len(kwargs["prompt_ids"]))
            bare = {"device": ctx.device, "modules": kwargs["modules"], "threads": ctx.threads}

            def start_fresh(name: str) -> Any:  # nothing prepared, prebuilt or pre-faulted: a plain ready process
                return start_worker(ctx.executor, WORKER, bare, name=name, num_cpus=cpus, num_gpus=num_gpus)

            self._start_fresh = start_fresh

        # a handed-out worker's replacement starts after its trial: no start shares the CPU with a measured one
        self.pool = WorkerPool(start_one, self.size, name="pool", refill_on_acquire=not self.wait_full)
        try:
            self.pool.wait_full(self.start_timeout_s)
        except PoolError as exc:
            self.close()
            raise TrialError(f"runtime=pool could not start its workers: {exc}") from None

    def reusable(self, worker: dict[str, Any]) -> bool:
        """The recycle rule (:func:`reusable`) with this pool's knobs."""
        return reusable(worker, self.recycle, self.rss_tolerance, self.max_uses)

    def source(self, start: Callable[[str], Any], name: str) -> WorkerPool:
        """A server's pool of instance processes: ``size`` ready; a handed-out worker's replacement starts once its
        cold start is loaded (``refill: after_load``, so the start does not share the CPU with it) or at once
        (``on_acquire``)."""
        return WorkerPool(start, self.size, name=name, refill_on_acquire=True,
                          refill_after_load=self.refill == "after_load")

    def settle(self, timeout_s: float) -> None:
        """Wait until the pool is full again (with ``wait_full``; otherwise cold starts may meet a refill)."""
        if self.pool is not None and self.wait_full:
            try:
                self.pool.wait_full(timeout_s)
            except PoolError as exc:
                raise TrialError(f"runtime=pool: {exc}") from None

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One cold start on a ready worker. With ``wait_full`` (default) the trial starts once the pool is full
        again, so a refill never competes with the cold start it would distort; a worker that dies mid-trial is
        replaced and the trial retried (``retries``)."""
        if self.pool is None:
            raise RuntimeError("PoolRuntime.start() was not called")
        if self._start_fresh is not None and spec.get("engine") and prepared_key(spec) not in self._prepared:
            return self._run_fresh(spec, timeout_s, self._start_fresh)
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                if self.wait_full:
                    self.pool.wait_full(self.start_timeout_s)
                spawn_ts = time.time()
                handle, _ = self.pool.acquire(self.start_timeout_s)
            except PoolError as exc:
                raise TrialError(f"runtime=pool: {exc}") from None
            try:
                out: dict[str, Any] = handle.call("trial", spec, spawn_ts, timeout_s=timeout_s)
            except WorkerTimeoutError:
                self.pool.discard(handle)
                raise TrialError(f"trial timed out after {timeout_s:g} s on pool worker {handle.name}") from None
            except WorkerError as exc:
                self.pool.discard(handle)
                if isinstance(exc, WorkerDiedError) and attempt + 1 < attempts:
                    self.retried += 1
                    continue
                raise TrialError(f"pool worker {handle.name}: {str(exc)[-2000:]}") from None
            except BaseException:  # Ctrl-C mid-trial: a handed-out worker is ours to end (pool.close skips it)
                self.pool.discard(handle)
                raise
            out["worker"]["reused"] = self.reusable(out["worker"])
            out["worker"]["fresh_start"] = False
            out["retried"] = attempt
            self.pool.release(handle, out["worker"]["reused"])
            return out
        raise AssertionError("unreachable")

    def _run_fresh(self, spec: dict[str, Any], timeout_s: float, start: Callable[[str], Any]) -> dict[str, Any]:
        """A cold start no prepared engine fits, on a worker started for it and closed after: its start (process,
        imports, device init) lies inside the measured cold start, between spawn and hand-off."""
        self.fresh_starts += 1
        spawn_ts = time.time()
        name = f"pool-fresh-{self.fresh_starts}"
        handle = start(name)
        try:
            out: dict[str, Any] = handle.call("trial", spec, spawn_ts, timeout_s=timeout_s + self.start_timeout_s)
        except WorkerTimeoutError:
            handle.kill()
            raise TrialError(f"trial timed out after {timeout_s:g} s on {name}") from None
        except WorkerError as exc:
            handle.kill()
            raise TrialError(f"{name}: {str(exc)[-2000:]}") from None
        except BaseException:
            handle.kill()
            raise
        handle.close()
        out["worker"].update({"reused": False, "fresh_start": True})
        out["retried"] = 0
        return out

    def describe(self) -> dict[str, Any]:
        stats = dict(self.pool.stats) if self.pool is not None else {}
        return {"name": self.name, "size": self.size, "recycle": self.recycle, "rss_tolerance": self.rss_tolerance,
                "max_uses": self.max_uses, "preimport": self.preimport, "warmup": self.warmup,
                "prebuild": self.prebuild, "refill": self.refill, "arena": self.arena,
                "prepare_engines": self.prepare_engines,
                "retried": self.retried, "fresh_starts": self.fresh_starts, **stats}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
