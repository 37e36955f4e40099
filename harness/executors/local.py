"""Trials and long-lived workers as fresh subprocesses on this machine (a cold start pays the interpreter start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.executors.base import TrialError
from harness.executors.local_worker import LocalWorker

STDERR_TAIL = 2000


class LocalExecutor:
    """Spawn ``python -m harness.trial`` per trial, in its own process group so a hang is killed whole."""

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.python = python or sys.executable
        self.env = dict(env or {})

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if timeout_s <= 0:
            raise ValueError(f"trial_timeout_s must be > 0, got {timeout_s}")
        with tempfile.TemporaryDirectory(prefix="coldstart-trial-") as tmp:
            spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
            spec_path.write_text(json.dumps(spec))
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
            spawn_ts = time.time()
            proc = subprocess.Popen(
                [self.python, "-m", "harness.trial", str(spec_path), str(out_path), repr(spawn_ts)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
            )
            try:
                _, stderr = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                _, stderr = proc.communicate()
                raise TrialError(f"trial timed out after {timeout_s:g} s; stderr: {_tail(stderr)}") from None
            if proc.returncode != 0:
                raise TrialError(f"trial process exited with code {proc.returncode}; stderr: {_tail(stderr)}")
            if not out_path.exists():
                raise TrialError(f"trial process wrote no result; stderr: {_tail(stderr)}")
            return dict(json.loads(out_path.read_text()))

    def start_worker(self, target: str, kwargs: dict[str, Any], *, name: str, num_cpus: float = 1,
                     memory_bytes: int | None = None, env: dict[str, str] | None = None, num_gpus: float = 0,
                     resources: dict[str, float] | None = None, max_concurrency: int = 1) -> LocalWorker:
        """A long-lived worker subprocess hosting ``target`` (see ``harness.executors.workers``); GPU counts and
        custom resources only matter to placement on Ray and are ignored here."""
        return LocalWorker(target, kwargs, name=name, num_cpus=num_cpus, memory_bytes=memory_bytes,
                           env={**self.env, **(env or {})}, python=self.python, max_concurrency=max_concurrency)

    def nodes(self) -> list[str]:
        """One machine: no nodes to pin workers to."""
        return []

    def connect(self) -> None:
        """Nothing to connect to."""

    def close(self) -> None:
        """Nothing is held between trials or workers."""


def _tail(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # the exception line is the most useful part; keep the end of the traceback
    return "\n".join(lines)[-STDERR_TAIL:] or "(empty)"
