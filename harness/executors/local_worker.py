"""A long-lived worker as a fresh subprocess on this machine: own process group, RPC over a socket pair.

Child: ``python -m harness.executors.local_worker FD TARGET`` builds the object from the pickled kwargs it
receives first, then answers ``(call_id, method, args, kwargs)`` messages until told to stop or the socket
closes. Parent: ``LocalWorker`` — a reader thread resolves futures; EOF means the process died.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from harness.executors.workers import (
    WorkerCallError,
    WorkerDiedError,
    apply_thread_budget,
    build_target,
    call_with_timeout,
    invoke,
    thread_env,
)

STDERR_TAIL = 2000
WATCH_PERIOD_S = 0.2


class LocalWorker:
    """Parent-side handle of one worker subprocess (see ``harness.executors.workers`` for the API)."""

    def __init__(self, target: str, kwargs: dict[str, Any], *, name: str, num_cpus: float = 1,
                 memory_bytes: int | None = None, env: dict[str, str] | None = None, python: str | None = None,
                 max_concurrency: int = 1, start_timeout_s: float = 120.0) -> None:
        self.name, self.target, self.memory_bytes = name, target, memory_bytes
        self._ids = itertools.count()
        self._pending: dict[int, tuple[str, Future[Any]]] = {}
        self._lock = threading.Lock()
        self._dead_reason: str | None = None
        self._closing = False
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 — lives as long as the worker; removed by close()
           prefix=f"coldstart-worker-{name}-", suffix=".log", delete=False)
        parent_sock, child_sock = socket.socketpair()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **thread_env(num_cpus), **(env or {}),
                    "COLDSTART_WORKER_NAME": name}
        self._proc = subprocess.Popen(
            [python or sys.executable, "-m", "harness.executors.local_worker", str(child_sock.fileno()), target,
             repr(float(num_cpus)), str(max_concurrency)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=full_env, start_new_session=True,
            pass_fds=(child_sock.fileno(),))
        child_sock.close()
        self._sock = parent_sock
        self._conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, name=f"worker-{name}-reader", daemon=True)
        self._reader.start()
        if memory_bytes is not None:
            threading.Thread(target=self._watch_memory, name=f"worker-{name}-watch", daemon=True).start()
        try:
            self._send(("init", kwargs))
            self.call("__worker_ping__", timeout_s=start_timeout_s)  # construction errors surface here
        except BaseException:
            self.close(timeout_s=1.0)  # a worker that could not start leaves no process behind
            raise

    # -- API ---------------------------------------------------------------------------------------------------
    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._dead_reason is not None:
                fut.set_exception(WorkerDiedError(self._dead_reason))
                return fut
            call_id = next(self._ids)
            self._pending[call_id] = (method, fut)
        try:
            self._send(("call", call_id, method, args, kwargs))
        except OSError:
            self._mark_dead()
        return fut

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return call_with_timeout(self.name, method, self.submit(method, *args, **kwargs), timeout_s)

    def alive(self) -> bool:
        return self._dead_reason is None and self._proc.poll() is None

    def pid(self) -> int | None:
        return self._proc.pid

    def kill(self) -> None:
        self._killpg()
        self._proc.wait()
        self._reader.join(timeout=5)
        self._mark_dead()  # the reason keeps the stderr tail; the log file goes
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to stop (its object's ``close()`` runs if it has one); kill it if it does not."""
        self._closing = True
        if self._proc.poll() is None:
            try:
                self._send(("stop",))
                self._proc.wait(timeout=timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._killpg()  # whatever it started in its group goes too
        self._proc.wait()
        self._reader.join(timeout=5)
        self._mark_dead()
        self._conn.close()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def stderr_tail(self) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text.strip()[-STDERR_TAIL:] or "(empty)"

    # -- internals ---------------------------------------------------------------------------------------------
    def _send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _killpg(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _read_loop(self) -> None:
        while True:
            try:
                call_id, status, payload = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                method, fut = self._pending.pop(call_id, ("?", None))
            if fut is None:
                continue
            if status == "ok":
                fut.set_result(payload)
            else:
                fut.set_exception(WorkerCallError(self.name, method, *payload))
        self._mark_dead()

    def _mark_dead(self, reason: str | None = None) -> None:
        if self._proc.poll() is None and reason is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)
        with self._lock:
            if self._dead_reason is None:
                code = self._proc.poll()
                how = reason or ("closed" if self._closing else
                                 f"exited with code {code}" if code is None or code >= 0 else
                                 f"killed by signal {signal.Signals(-code).name}")
                self._dead_reason = f"worker {self.name!r} (pid {self._proc.pid}) {how}; stderr: {self.stderr_tail()}"
            pending, self._pending = self._pending, {}
        for method, fut in pending.values():
            if not fut.done():
                fut.set_exception(WorkerDiedError(f"{self._dead_reason} (during {method}())"))

    def _watch_memory(self) -> None:
        import psutil

        assert self.memory_bytes is not None
        while self._proc.poll() is None and self._dead_reason is None:
            try:
                root = psutil.Process(self._proc.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                return
            if rss > self.memory_bytes:
                reason = f"exceeded its memory budget ({rss} > {self.memory_bytes} bytes RSS) and was killed"
                self._killpg()
                self._proc.wait()
                self._mark_dead(reason)
                return
            time.sleep(WATCH_PERIOD_S)


def _serve(fd: int, target: str, num_cpus: float, max_concurrency: int) -> None:
    conn = Connection(fd)
    send_lock = threading.Lock()

    def reply(call_id: int, result: tuple[str, Any]) -> None:
        with send_lock:
            conn.send((call_id, *result))

    apply_thread_budget(num_cpus)
    kind, kwargs = conn.recv()
    assert kind == "init", kind
    obj: Any = None
    init_error: tuple[str, Any] | None = None
    status, built = invoke(_Builder(target, kwargs), "build", (), {})
    if status == "ok":
        obj = built
    else:
        init_error = (status, built)
    pool = ThreadPoolExecutor(max_concurrency) if max_concurrency > 1 else None
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent went away: so do we
                break
            if msg[0] == "stop":
                break
            _, call_id, method, args, kw = msg
            if init_error is not None:
                reply(call_id, init_error)
            elif pool is not None:
                pool.submit(_answer, reply, obj, call_id, method, args, kw)
            else:
                reply(call_id, invoke(obj, method, args, kw))
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if obj is not None and callable(getattr(obj, "close", None)):
            obj.close()


def _answer(reply: Any, obj: Any, call_id: int, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    reply(call_id, invoke(obj, method, args, kw))


class _Builder:
    """Lets construction errors travel back like call errors."""

    def __init__(self, target: str, kwargs: dict[str, Any]) -> None:
        self.target, self.kwargs = target, kwargs

    def build(self) -> Any:
        return build_target(self.target, self.kwargs)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
