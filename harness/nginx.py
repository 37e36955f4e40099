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


@contextlib.contextmanager
def serve(root: Path, port: int | None = None, host: str = "127.0.0.1", workers: int = 2,
          locations: str = "") -> Iterator[str]:
    """nginx serving ``root`` at the yielded URL until the block ends (SIGQUIT, then SIGKILL).

    ``port=None`` picks a free one; ``locations`` adds nginx ``location`` blocks (tests use it for misbehaviour).
    """
    binary = nginx_binary()
    port = free_port(host) if port is None else port
    prefix = Path(tempfile.mkdtemp(prefix="coldstart-nginx-"))
    conf = prefix / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read root-owned 0700 directories
    conf.write_text(CONF.format(prefix=prefix, root=Path(root).resolve(), port=port, host=host, user=user,
                                workers=workers, locations=locations))
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timeout"
                    raise NginxError(f"nginx did not start on {host}:{port}: {err.strip()} "
                                     f"(log: {prefix / 'error.log'})") from None
                time.sleep(0.05)
        yield f"http://{host}:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(prefix, ignore_errors=True)
