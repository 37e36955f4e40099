"""Where block servers live: in this process (tests), a local process each, or a Ray actor each; one handle API.

A minimal runner of our own (the shared long-lived-worker seam was not available when this chain was built):
``call(method, *args)`` runs a ``BlockServer`` method and raises ``ServerDiedError`` once the server is gone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import threading
import uuid
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, Protocol

from harness.zoo import ModelSpec
from placement.real.server import BlockServer, ServerConfig

START_TIMEOUT_S = 120.0
# The fork server imports torch and transformers once; every server is then a cheap fork of it (a fresh
# interpreter each would cost ~6 s on the 2-core VM). It runs no torch op, so forking it is safe.
_PRELOAD = ["torch", "transformers", "placement.real.server"]


class ServerDiedError(RuntimeError):
    """The server process or actor is gone (killed, crashed); the client re-routes around it."""


class ServerStartError(RuntimeError):
    """A server could not start (its constructor raised, or it did not answer within the start timeout)."""


class Host(Protocol):
    """A handle on one running ``BlockServer``."""

    name: str

    def call(self, method: str, *args: Any) -> Any: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


class InProcessHost:
    """The server object in this process (fast tests); ``kill`` makes every later call raise ServerDiedError."""

    def __init__(self, spec: ModelSpec, config: ServerConfig) -> None:
        self.name = config.name
        self.server: BlockServer | None = BlockServer(spec, config)

    def call(self, method: str, *args: Any) -> Any:
        server = self.server
        if server is None:
            raise ServerDiedError(f"{self.name} is dead")
        return getattr(server, method)(*args)

    def kill(self) -> None:
        self.server = None

    def close(self) -> None:
        self.server = None


def _serve(spec: ModelSpec, config: ServerConfig, address: str, authkey: bytes, ready: Connection) -> None:
    """Server process body: build the server, then one thread per client connection, until killed."""
    try:
        server = BlockServer(spec, config)
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
    except Exception as exc:  # reported to the parent, which raises ServerStartError
        ready.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    ready.send(("ready", os.getpid()))

    def handle(conn: Connection) -> None:
        with conn:
            while True:
                try:
                    method, args = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    conn.send(("ok", getattr(server, method)(*args)))
                except Exception as exc:
                    conn.send(("err", exc))

    while True:
        conn = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class LocalProcessHost:
    """One forked process per server on this machine (``executor=local``); a connection per client thread."""

    def __init__(self, spec: ModelSpec, config: ServerConfig) -> None:
        self.name = config.name
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        self._dir = tempfile.mkdtemp(prefix="coldstart-chain-")
        self._address = os.path.join(self._dir, "sock")
        self._authkey = uuid.uuid4().bytes
        parent, child = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_serve, args=(spec, config, self._address, self._authkey, child),
                                   daemon=True, name=f"block-server-{config.name}")
        self.process.start()
        child.close()
        self._ready = parent
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._conns_lock = threading.Lock()
        self._started = False

    def wait_ready(self) -> None:
        """Block until the server answers (servers start in parallel: construct all, then wait on each)."""
        if self._started:
            return
        if not self._ready.poll(START_TIMEOUT_S):
            self.kill()
            raise ServerStartError(f"{self.name}: no answer within {START_TIMEOUT_S:g} s")
        kind, detail = self._ready.recv()
        if kind != "ready":
            self.kill()
            raise ServerStartError(f"{self.name}: {detail}")
        self._started = True

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.wait_ready()
            try:
                conn = Client(self._address, family="AF_UNIX", authkey=self._authkey)
            except OSError as exc:
                raise ServerDiedError(f"{self.name}: cannot connect ({exc})") from exc
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def call(self, method: str, *args: Any) -> Any:
        conn = self._conn()
        try:
            conn.send((method, args))
            kind, value = conn.recv()
        except (EOFError, OSError) as exc:
            raise ServerDiedError(f"{self.name} (pid {self.process.pid}) is gone: {type(exc).__name__}") from exc
        if kind == "err":
            raise value
        return value

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: no goodbye, open sessions are lost."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)

    def close(self) -> None:
        self.kill()
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        for path in (self._address,):
            if os.path.exists(path):
                os.unlink(path)
        os.rmdir(self._dir)


def stop_fork_server() -> None:
    """Stop the preloaded fork server (no process is left behind once a deployment is closed)."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


class RayActorHost:
    """One Ray actor per server (``executor=ray``), threaded so concurrent sessions overlap as on a GPU."""

    def __init__(self, spec: ModelSpec, config: ServerConfig, num_cpus: float = 0.25,
                 max_concurrency: int = 16) -> None:
        from harness.raycluster import import_ray

        self.name = config.name
        self._ray = import_ray()
        actor_cls = self._ray.remote(BlockServer)
        self.actor = actor_cls.options(num_cpus=num_cpus, max_concurrency=max_concurrency,
                                       name=f"block-server-{config.name}-{uuid.uuid4().hex[:6]}").remote(spec, config)

    def wait_ready(self) -> None:
        try:
            self._ray.get(self.actor.ping.remote(), timeout=START_TIMEOUT_S)
        except Exception as exc:
            raise ServerStartError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    def call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import RayActorError

        try:
            return self._ray.get(getattr(self.actor, method).remote(*args))
        except RayActorError as exc:
            raise ServerDiedError(f"{self.name} (Ray actor) is gone") from exc

    def kill(self) -> None:
        self._ray.kill(self.actor, no_restart=True)

    def close(self) -> None:
        self.kill()
