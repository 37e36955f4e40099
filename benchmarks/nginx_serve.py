"""Serve a directory with nginx on 127.0.0.1 (the remote store for ``storage=remote`` and the remote benchmark).

    python benchmarks/nginx_serve.py ~/.cache/coldstart/checkpoints --port 8080    # Ctrl-C stops it

nginx must be installed (``.ci/install-nginx.sh`` does it as root). Static files, ranges on, sendfile, no logs.
"""

from __future__ import annotations

import argparse
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
    default_type application/octet-stream;
    server {{ listen {host}:{port}; root {root}; }}
}}
"""


@contextlib.contextmanager
def serve(root: Path, port: int = 8080, host: str = "127.0.0.1", workers: int = 4) -> Iterator[str]:
    """nginx serving ``root`` at the yielded URL until the block ends."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        raise SystemExit("nginx is not installed: run .ci/install-nginx.sh (as root) or apt-get install nginx")
    prefix = Path(tempfile.mkdtemp(prefix="coldstart-nginx-"))
    conf = prefix / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(CONF.format(prefix=prefix, root=Path(root).resolve(), port=port, host=host, user=user,
                                workers=workers))
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"nginx did not start on {host}:{port}; see {prefix / 'error.log'}") from None
                time.sleep(0.05)
        yield f"http://{host}:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(prefix, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    with serve(args.root, args.port, args.host) as url:
        print(f"serving {args.root} at {url} (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
