"""The ``forkserver`` runtime: a zygote that imported torch, transformers, the harness, the run's loaders and
modeling modules forks one child per cold start. CPU only: a CUDA context does not survive ``fork``."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.executors.base import TrialError
from runtimes.base import RuntimeContext, RuntimeUnsupportedError
from runtimes.warm import BASE_MODULES, modules_of
from runtimes.zygote import Zygote, ZygoteError

STDERR_TAIL = 2000


def forked_trial(spec_path: str, out_path: str, spawn_ts: float) -> None:
    """In a forked child: the hand-off is now (the zygote's imports are already done)."""
    handoff = time.time()
    from harness.trial import run_files

    run_files(spec_path, out_path, spawn_ts, handoff)


class ForkserverRuntime:
    """Forks each cold start from a zygote; a dead zygote is restarted before the next fork (``restarts`` counts)."""

    name = "forkserver"

    def __init__(self, preimport: list[str] | None = None, preimport_run: bool = True,
                 start_timeout_s: float = 300.0) -> None:
        self.preimport = list(BASE_MODULES if preimport is None else preimport)
        self.preimport_run = preimport_run
        self.start_timeout_s = float(start_timeout_s)
        if self.start_timeout_s <= 0:
            raise ValueError(f"runtime.start_timeout_s={start_timeout_s}; it must be > 0")
        self.zygote: Zygote | None = None

    def check(self, ctx: RuntimeContext) -> None:
        """CUDA is refused: a CUDA context does not survive ``fork``."""
        if ctx.device.startswith("cuda"):
            raise RuntimeUnsupportedError(
                f"runtime=forkserver cannot serve device={ctx.device}: a CUDA context does not survive fork, so a "
                "forked child of the zygote could not use the GPU; use runtime=pool (pre-started processes) or "
                "runtime=fresh on a GPU")

    def start(self, ctx: RuntimeContext) -> None:
        self.check(ctx)
        if self.zygote is not None:
            return
        modules = list(self.preimport)
        models: list[dict[str, Any]] = []
        if self.preimport_run:
            modules += [m for m in modules_of(ctx.loaders) if m not in modules]
            models = list(ctx.models)
        python = getattr(ctx.executor, "python", None)
        env = dict(getattr(ctx.executor, "env", {}) or {})
        if ctx.threads:
            env.update({"OMP_NUM_THREADS": str(ctx.threads), "MKL_NUM_THREADS": str(ctx.threads)})
        self.zygote = Zygote(modules, models, python=python, env=env, start_timeout_s=self.start_timeout_s)
        self.zygote.start()

    def settle(self, timeout_s: float) -> None:
        """Restart a zygote that died (its imports are not part of any cold start)."""
        if self.zygote is not None and not self.zygote.alive():
            self.zygote.start()

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.zygote is None:
            raise RuntimeError("ForkserverRuntime.start() was not called")
        if timeout_s <= 0:
            raise ValueError(f"trial_timeout_s must be > 0, got {timeout_s}")
        if not self.zygote.alive():
            self.zygote.start()  # restarted outside the timed cold start, as a kept-warm service would be
        with tempfile.TemporaryDirectory(prefix="coldstart-fork-") as tmp:
            spec_path, out_path, log_path = Path(tmp) / "spec.json", Path(tmp) / "out.json", Path(tmp) / "log"
            spec_path.write_text(json.dumps(spec))
            spawn_ts = time.time()
            try:
                pid = self.zygote.fork("runtimes.forkserver:forked_trial", [str(spec_path), str(out_path), spawn_ts],
                                       str(log_path))
            except ZygoteError as exc:
                raise TrialError(f"forkserver: {exc}") from None
            try:
                code = self.zygote.wait(pid, timeout_s)
            except TimeoutError:
                self.zygote.kill(pid)
                with contextlib.suppress(TimeoutError):  # reaped: close() must not killpg a pid reused since
                    self.zygote.wait(pid, 10)
                raise TrialError(f"trial timed out after {timeout_s:g} s; output: {_tail(log_path)}") from None
            if code not in (0, None):
                raise TrialError(f"forked trial exited with code {code}; output: {_tail(log_path)}")
            if not out_path.exists():
                raise TrialError(f"forked trial wrote no result; output: {_tail(log_path)}")
            return dict(json.loads(out_path.read_text()))

    def reusable(self, worker: dict[str, Any]) -> bool:
        return False  # a forked child serves one cold start

    def host_kwargs(self, ctx: RuntimeContext) -> dict[str, Any]:
        raise RuntimeUnsupportedError(self._no_hosting)

    def source(self, start: Callable[[str], Any], name: str) -> Any:
        raise RuntimeUnsupportedError(self._no_hosting)

    _no_hosting = ("runtime=forkserver forks one-shot loading trials; long-lived serverless instances (RPC workers) "
                   "start from runtime=fresh or runtime=pool")

    def describe(self) -> dict[str, Any]:
        z = self.zygote
        return {"name": self.name, "preimport": self.preimport, "preimport_run": self.preimport_run,
                "zygote_starts": z.starts if z else 0, "zygote_start_s": list(z.start_s) if z else []}

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[-STDERR_TAIL:] or "(empty)"
    except OSError:
        return "(none)"
