"""A real nginx serving a directory on 127.0.0.1 for the remote-tier tests, and a small misbehaving server.

nginx is installed by the test set-up (``.ci/install-nginx.sh``, run by ``make test``). Without it these tests
FAIL with how to install it: a remote tier that was never exercised must not pass quietly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("nginx is not installed, so the remote tier cannot be tested: run .ci/install-nginx.sh "
                    "(as root: apt-get install -y nginx), or `make test`, which runs it", pytrace=False)
    return found


CONF = """
worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream bin; application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /norange/ {{ alias {root}/; max_ranges 0; }}
        location /status500/ {{ return 500; }}
    }}
}}
"""


@dataclass
class Nginx:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session", name="nginx")
def nginx_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving a fresh directory at ``nginx.url``; stopped (SIGQUIT, then SIGKILL) at the end."""
    binary = nginx_binary()
    prefix = tmp_path_factory.mktemp("nginx")
    root = prefix / "www"
    root.mkdir()
    port = _free_port()
    conf = prefix / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read pytest's 0700 temp dirs
    conf.write_text(CONF.format(prefix=prefix, root=root, port=port, user=user))
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timeout"
                proc.kill()
                pytest.fail(f"nginx did not start on 127.0.0.1:{port}: {err}", pytrace=False)
            time.sleep(0.05)
    try:
        yield Nginx(root, port, proc)
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class FaultyServer:
    """Serves one directory, misbehaving on purpose: ``mode`` = ``cut`` (drops the body halfway), ``flaky``
    (HTTP 500 for the first ``fail_first`` requests, then fine), ``short`` (claims fewer bytes than a range)."""

    def __init__(self, root: Path, mode: str, fail_first: int = 0) -> None:
        self.root, self.mode, self.fail_first, self.requests = root, mode, fail_first, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, head_only: bool) -> None:
                server.requests += 1
                path = server.root / self.path.lstrip("/")
                if server.mode == "flaky" and server.requests <= server.fail_first:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                rng = self.headers.get("Range")
                if rng and not head_only:
                    a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
                    body = data[a : b + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(data)}")
                    if server.mode == "short" and len(body) > 1:
                        body = body[: len(body) // 2]
                    self.send_header("Content-Length", str(b + 1 - a if server.mode == "cut" else len(body)))
                    self.end_headers()
                    if server.mode == "cut":
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head_only:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(head_only=False)

            def do_HEAD(self) -> None:
                self._send(head_only=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FaultyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
