"""The loopback nginx of the remote tier: a port another process holds is never mistaken for nginx."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness.nginx as nginx


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another socket listens on (as a parallel test's server would)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_port_in_use_is_an_error_not_a_connection_to_the_other_server(tmp_path: Path, held_port: int) -> None:
    with pytest.raises(nginx.NginxError, match=rf"127\.0\.0\.1:{held_port}.*in use"), \
            nginx.serve(tmp_path, port=held_port):
        pass


def test_a_free_port_taken_before_nginx_binds_it_is_picked_again(tmp_path: Path, held_port: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.bin").write_bytes(b"payload")
    picks = [held_port]
    real = nginx.free_port
    monkeypatch.setattr(nginx, "free_port", lambda host="127.0.0.1": picks.pop() if picks else real(host))
    with nginx.serve(tmp_path) as url:
        assert not url.endswith(f":{held_port}")
        with urllib.request.urlopen(f"{url}/x.bin", timeout=5) as r:
            assert r.read() == b"payload"
