"""A real nginx serving a directory on 127.0.0.1: the remote store of ``storage=remote``, its benchmark and tests.

nginx must be installed (``.ci/install-nginx.sh`` does it as root; ``make test`` runs it). Static files, byte
ranges on, sendfile, no access log; it listens on the loopback address only unless told otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CONF = """
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 512; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream bin; application/json json; }}
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        root {root};
{locations}
    }}
}}
"""

INSTALL_HINT = "run .ci/install-nginx.sh (as root: apt-get install -y nginx), or `make test`, which runs it"


class NginxError(RuntimeError):
    """nginx is missing or did not start; the message says which and what to do."""


def nginx_binary() -> str:
    """The nginx executable, or :class:`NginxError` naming how to install it."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        raise NginxError(f"nginx is not installed: {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


PORT_TRIES = 5   # a free port picked here can be taken by another process before nginx binds it: pick again


def _start(binary: str, conf: Path, prefix: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    """Start nginx on ``host:port`` and wait until it is the one listening there; NginxError when it exits first."""
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        # nginx writes its pid file once it has bound its listening socket: a connection that succeeds before then
        # could be another process that holds the port
        if proc.poll() is None and (prefix / "nginx.pid").exists():
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                return proc
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            err = proc.stderr.read().decode().strip() if proc.stderr else ""
            raise NginxError(f"nginx did not start on {host}:{port}: {err or 'timeout'} "
                             f"(log: {prefix / 'error.log'})")
        time.sleep(0.05)


@contextlib.contextmanager
def serve(root: Path, port: int | None = None, host: str = "127.0.0.1", workers: int = 2,
          locations: str = "") -> Iterator[str]:
    """nginx serving ``root`` at the yielded URL until the block ends (SIGQUIT, then SIGKILL).

    ``port=None`` picks a free one (again, up to ``PORT_TRIES`` times, when another process takes it first);
    ``locations`` adds nginx ``location`` blocks (tests use it for misbehaviour).
    """
    binary = nginx_binary()
    prefix = Path(tempfile.mkdtemp(prefix="coldstart-nginx-"))
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read root-owned 0700 directories
    proc: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(1 if port is not None else PORT_TRIES):
            chosen = free_port(host) if port is None else port
            conf = prefix / "nginx.conf"
            conf.write_text(CONF.format(prefix=prefix, root=Path(root).resolve(), port=chosen, host=host, user=user,
                                        workers=workers, locations=locations))
            try:
                proc = _start(binary, conf, prefix, host, chosen)
                break
            except NginxError as exc:
                if port is not None or "in use" not in str(exc) or attempt == PORT_TRIES - 1:
                    raise
        assert proc is not None
        yield f"http://{host}:{chosen}"
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(prefix, ignore_errors=True)
