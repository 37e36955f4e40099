"""A real nginx serving a directory on 127.0.0.1 for the remote-tier tests, and a small misbehaving server.

nginx is installed by the test set-up (``.ci/install-nginx.sh``, run by ``make test``). Without it these tests
FAIL with how to install it: a remote tier that was never exercised must not pass quietly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.nginx import NginxError, free_port, serve

# misbehaviour on purpose: a path prefix without range support, and one that always answers HTTP 500
TEST_LOCATIONS = """
        location /norange/ { alias ROOT/; max_ranges 0; }
        location /status500/ { return 500; }
"""


def _free_port() -> int:
    return free_port()


@dataclass
class Nginx:
    root: Path
    url: str


@pytest.fixture(scope="session", name="nginx")
def nginx_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving a fresh directory at ``nginx.url``; stopped at the end. Without nginx: a failure, not a skip."""
    root = tmp_path_factory.mktemp("nginx") / "www"
    root.mkdir()
    try:
        with serve(root, locations=TEST_LOCATIONS.replace("ROOT", str(root.resolve()))) as url:
            yield Nginx(root, url)
    except NginxError as exc:
        pytest.fail(f"the remote tier cannot be tested: {exc}", pytrace=False)


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
