"""Connect to a Ray cluster, or start a local one on loopback, and always leave it as it was found."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RayMissingError(RuntimeError):
    """``executor=ray`` was asked for but the ``ray`` package is not installed."""


def import_ray() -> Any:
    """The ``ray`` module, or a clear error naming the extra that installs it."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayMissingError("executor=ray needs the ray package: pip install -e '.[ray]' "
                              "(make setup installs it by default)") from exc


def _loopback_only(ray: Any) -> None:
    """Keep a local instance on 127.0.0.1: Ray otherwise rewrites a loopback ``_node_ip_address`` to the host's
    reachable address and listens there. Its single-machine mode (the switch it uses on macOS) stays on loopback;
    the variable is inherited by the raylet and workers it spawns."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                namespace: str = "coldstart") -> Iterator[Any]:
    """Yield the ``ray`` module connected to ``address`` (``auto`` or ``ray://host:port``), or to a fresh local
    instance on 127.0.0.1 with ``num_cpus`` CPUs when ``address`` is None; shut down only what this started.

    A Ray session that is already initialised in this process is reused and left running.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    else:
        _loopback_only(ray)
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 namespace=namespace, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
