"""Hand-written fakes for the runtime tests: worker handles without processes, functions a zygote's child runs
(imported there by ``module:function``), and a runtime that stops a run as Ctrl-C would."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runtimes.pool import PoolRuntime


# -- WorkerPool: handles and a start function, no processes --------------------------------------------------------
class FakeHandle:
    """A worker handle that records how it ended; ``die()`` makes it dead as a killed process would be."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dead = False
        self.closed = 0
        self.killed = 0

    def alive(self) -> bool:
        return not (self.dead or self.closed or self.killed)

    def die(self) -> None:
        self.dead = True

    def close(self) -> None:
        self.closed += 1

    def kill(self) -> None:
        self.killed += 1


class FakeStarter:
    """``start(name)`` for a WorkerPool: returns FakeHandles, fails the first ``fail_first`` starts (or every start
    with ``fail_always``), and blocks while ``gate`` is clear."""

    def __init__(self, fail_first: int = 0, fail_always: bool = False) -> None:
        self.fail_first, self.fail_always = fail_first, fail_always
        self.calls: list[str] = []
        self.handles: list[FakeHandle] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a start began
        self._lock = threading.Lock()

    def __call__(self, name: str) -> FakeHandle:
        self.entered.set()
        self.gate.wait()
        with self._lock:
            self.calls.append(name)
            if self.fail_always or len(self.calls) <= self.fail_first:
                raise OSError(f"no memory for {name} (start #{len(self.calls)})")
            handle = FakeHandle(name)
            self.handles.append(handle)
            return handle

    def started(self) -> int:
        with self._lock:
            return len(self.handles)


def wait_until(predicate: Any, within_s: float = 10.0) -> bool:
    """Poll ``predicate()`` until it is true (True) or ``within_s`` passed (False)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# -- what a zygote's forked child runs (``tests.runtimes.fakes:<function>``) ----------------------------------------
def write_ids(path: str) -> None:
    """The child's pid, process group and session."""
    Path(path).write_text(f"{os.getpid()} {os.getpgid(0)} {os.getsid(0)}")


def raise_error(message: str) -> None:
    print("about to fail")
    raise RuntimeError(message)


def exit_with(code: int) -> None:
    os._exit(code)


def hang_with_child(path: str) -> None:
    """Start a grandchild, write both pids, sleep: killing the child must take the grandchild too."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path(path).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(3600)


# -- a runtime that is stopped by Ctrl-C --------------------------------------------------------------------------
class InterruptingPoolRuntime(PoolRuntime):
    """A pool runtime whose run_trial raises ``KeyboardInterrupt`` once it ran ``after`` trials (a Ctrl-C in the
    trial loop while the pool's workers are up)."""

    def __init__(self, after: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after, self.calls = int(after), 0

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return super().run_trial(spec, timeout_s)
