"""A zygote process that imported everything once and forks one child per request: ``python -m runtimes.zygote FD``.

Protocol over a socket pair (``multiprocessing.connection`` messages): the parent sends ``("init", modules,
models)`` and gets ``("ready", pid, seconds)``; then ``("fork", req, "module:function", args, log_path)`` →
``("forked", req, pid)``, and later ``("exit", pid, code)`` when the zygote reaps that child. The zygote is
single-threaded (it polls the socket and reaps between polls), so a fork never copies another thread's lock.
Each child starts its own session (its process group is its pid), writes its output to ``log_path``, runs the
function and exits; the parent can kill it with ``os.killpg(pid, SIGKILL)`` whatever became of the zygote.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

POLL_S = 0.02
STDERR_TAIL = 2000


class ZygoteError(RuntimeError):
    """The zygote could not start (its imports failed) or died; the message carries its log's tail."""


class Zygote:
    """Parent-side handle of one zygote process; :meth:`fork` restarts it if it died."""

    def __init__(self, modules: list[str], models: list[dict[str, Any]], *, python: str | None = None,
                 env: dict[str, str] | None = None, start_timeout_s: float = 300.0) -> None:
        self.modules, self.models = list(modules), list(models)
        self.python, self.env, self.start_timeout_s = python or sys.executable, dict(env or {}), start_timeout_s
        self.starts = 0
        self.start_s: list[float] = []  # seconds each start took (spawn → imports done)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._exits = threading.Condition()
        self._exit_codes: dict[int, int | None] = {}
        self._children: set[int] = set()
        self._pending: dict[int, Future[int]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._log: Any = None
        self._dead = True

    # -- API ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the zygote and wait until its imports are done (a no-op while it is alive)."""
        with self._lock:
            if self.alive():
                return
            self._stop_process()
            t0 = time.time()
            self._log = tempfile.NamedTemporaryFile(prefix="coldstart-zygote-", suffix=".log", delete=False)  # noqa: SIM115
            parent_sock, child_sock = socket.socketpair()
            self._proc = subprocess.Popen(
                [self.python, "-m", "runtimes.zygote", str(child_sock.fileno())],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env}, pass_fds=(child_sock.fileno(),))
            child_sock.close()
            self._conn = Connection(os.dup(parent_sock.fileno()))
            parent_sock.close()
            self._conn.send(("init", self.modules, self.models))
            if not self._conn.poll(self.start_timeout_s):
                self._stop_process()
                raise ZygoteError(f"the zygote did not finish its imports in {self.start_timeout_s:g} s")
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                tail = self._tail()
                self._stop_process()
                raise ZygoteError(f"the zygote exited during its imports; its log: {tail}") from None
            if msg[0] != "ready":
                self._stop_process()
                raise ZygoteError(f"the zygote failed during its imports: {msg[1]}")
            self._dead = False
            self.starts += 1
            self.start_s.append(time.time() - t0)
            threading.Thread(target=self._read_loop, args=(self._conn,), name="zygote-reader", daemon=True).start()

    def alive(self) -> bool:
        return not self._dead and self._proc is not None and self._proc.poll() is None

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def fork(self, target: str, args: list[Any], log_path: str, timeout_s: float = 30.0) -> int:
        """Fork a child that runs ``target(*args)`` (``"module:function"``); its pid. A dead zygote is restarted."""
        if not self.alive():
            self.start()
        req = next(self._ids)
        fut: Future[int] = Future()
        with self._lock:
            self._pending[req] = fut
            assert self._conn is not None
            try:
                self._conn.send(("fork", req, target, args, log_path))
            except OSError as exc:
                self._pending.pop(req, None)
                raise ZygoteError(f"the zygote is gone: {exc}; its log: {self._tail()}") from None
        try:
            pid = fut.result(timeout=timeout_s)
        except TimeoutError:
            raise ZygoteError(f"the zygote did not fork in {timeout_s:g} s") from None
        return pid

    def wait(self, pid: int, timeout_s: float) -> int | None:
        """Wait for child ``pid`` to exit; its exit code (``None``: unknown, its zygote died first). Raises
        ``TimeoutError`` if it is still running after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._exits:
            while pid not in self._exit_codes:
                if self._dead and not _running(pid):
                    self._exit_codes[pid] = None
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"child {pid} still running after {timeout_s:g} s")
                self._exits.wait(min(left, 0.1 if self._dead else 1.0))
            self._children.discard(pid)
            return self._exit_codes.pop(pid)

    def kill(self, pid: int) -> None:
        """Kill child ``pid`` and whatever it started (its own process group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill every child still running, then stop the zygote (idempotent)."""
        with self._lock:
            for pid in list(self._children):
                self.kill(pid)
            self._children.clear()
            self._stop_process()

    # -- internals ---------------------------------------------------------------------------------------------
    def _tail(self) -> str:
        if self._log is None:
            return "(no log)"
        try:
            return Path(self._log.name).read_text(errors="replace").strip()[-STDERR_TAIL:] or "(empty)"
        except OSError:
            return "(no log)"

    def _stop_process(self) -> None:
        self._dead = True
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
        self._proc, self._conn, self._log = None, None, None

    def _read_loop(self, conn: Connection) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "forked":
                _, req, pid = msg
                with self._exits:
                    self._children.add(pid)
                fut = self._pending.pop(req, None)
                if fut is not None:
                    fut.set_result(pid)
            elif msg[0] == "exit":
                _, pid, code = msg
                with self._exits:
                    self._exit_codes[pid] = code
                    self._exits.notify_all()
        if conn is self._conn:
            self._dead = True
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(ZygoteError(f"the zygote died; its log: {self._tail()}"))
        self._pending.clear()
        with self._exits:
            self._exits.notify_all()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------- the zygote itself
def _child(conn: Connection, target: str, args: list[Any], log_path: str) -> None:
    """In the forked child: own session, own log, run ``target(*args)``, exit (never returns)."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        conn.close()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        module, _, attr = target.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        fn(*args)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(fd: int) -> None:
    """The zygote's loop: imports, then fork on request and report exits, until told to stop or orphaned."""
    from runtimes.warm import preimport

    conn = Connection(fd)
    _, modules, models = conn.recv()
    try:
        took = preimport(modules, models)
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    conn.send(("ready", os.getpid(), took))
    children: set[int] = set()
    try:
        while True:
            if conn.poll(POLL_S):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    break
                if msg[0] == "stop":
                    break
                _, req, target, args, log_path = msg
                pid = os.fork()
                if pid == 0:
                    _child(conn, target, args, log_path)
                children.add(pid)
                conn.send(("forked", req, pid))
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.discard(pid)
                conn.send(("exit", pid, os.waitstatus_to_exitcode(status)))
    finally:
        for pid in children:  # the parent went away: leave no child behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
