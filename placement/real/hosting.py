"""Where block servers live: in this process (tests), or a long-lived worker each through the executor seam.

``WorkerHost`` hosts a ``BlockServer`` with ``harness.executors.workers.start_worker``: a local subprocess
(``executor=local``) or a Ray actor (``executor=ray``). ``call(method, *args)`` runs a server method and raises
``ServerDiedError`` once the server is gone, whichever executor hosts it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from harness.executors.workers import WorkerDiedError, start_worker
from harness.zoo import ModelSpec
from placement.real.server import BlockServer, ServerConfig

SERVER_TARGET = "placement.real.server:BlockServer"


class ServerDiedError(RuntimeError):
    """The server process or actor is gone (killed, crashed); the client re-routes around it."""


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


class WorkerHost:
    """A ``BlockServer`` in a worker of ``executor`` (object or its Hydra config); thread budget = ``num_cpus``.

    ``num_cpus`` defaults to the server's thread budget; on a small Ray instance pass a fraction (the actor's
    CPU resource) so that more servers than CPUs fit. Calls run concurrently (``max_concurrency``), as a GPU
    server overlaps sessions.
    """

    def __init__(self, spec: ModelSpec, config: ServerConfig, executor: Any, num_cpus: float | None = None,
                 max_concurrency: int = 32) -> None:
        self.name = config.name
        self.worker = start_worker(executor, SERVER_TARGET, {"spec": spec, "config": config}, name=config.name,
                                   num_cpus=num_cpus or float(config.threads or 1), max_concurrency=max_concurrency)

    def call(self, method: str, *args: Any) -> Any:
        # Tensors travel as numpy arrays: the local worker's pipe pickles torch tensors as shared-memory file
        # descriptors, which a worker that is not a multiprocessing child cannot open.
        plain = tuple(a.numpy() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            out = self.worker.call(method, *plain)
        except WorkerDiedError as exc:
            raise ServerDiedError(f"{self.name} is gone: {exc}") from exc
        if isinstance(out, tuple):
            return tuple(torch.tensor(o) if isinstance(o, np.ndarray) else o for o in out)
        return out

    def kill(self) -> None:
        """As a crashed machine: no goodbye, its sessions are lost (SIGKILL / ray.kill)."""
        self.worker.kill()

    def close(self) -> None:
        self.worker.close()
