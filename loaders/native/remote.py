"""The remote tier: a checkpoint directory at a URL, read with parallel range requests, written through to SSD.

``http://`` and ``https://`` URLs use a small keep-alive client on the standard library (one connection per
reader thread, ``Range: bytes=a-b``, answers checked for 206 and the exact length); every other scheme goes
through fsspec (``file://``, ``s3://`` with s3fs installed, …). Failures a user can cause are named:
``RemoteNotFoundError`` (404/403/410), ``RemoteHTTPError`` (other statuses, after retries),
``RangeNotSupportedError`` (a server that answers a range request with the whole file),
``RemoteShortReadError`` (fewer bytes than asked, after retries) and ``RemoteConnectionError`` (connection
refused or dropped, after retries). Retries are bounded (``retries``, exponential back-off).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from loaders.base import LoaderError
from loaders.native.pipeline import parallel_for

T = TypeVar("T")


class RemoteError(LoaderError):
    """Base of remote-tier failures; nothing partial is left in the SSD or DRAM tier when one is raised."""


class RemoteNotFoundError(RemoteError):
    """The URL (or one of the checkpoint's files under it) does not exist on the server."""


class RemoteHTTPError(RemoteError):
    """The server kept answering with an error status."""


class RangeNotSupportedError(RemoteError):
    """The server ignores ``Range`` headers (answers 200 with the whole file): parallel range reads need them."""


class RemoteShortReadError(RemoteError):
    """The server sent fewer bytes than asked (the remote file is shorter than its index, or the body was cut)."""


class RemoteTooLargeError(RemoteError):
    """A metadata file (an index) on the server is larger than ``loader.max_index_bytes``."""


class RemoteConnectionError(RemoteError):
    """The connection was refused, timed out or dropped, on every try."""


_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_MISSING_STATUS = {403, 404, 410}


def content_length(value: str | None, where: str) -> int | None:
    """A ``Content-Length`` header as a byte count (None when absent); anything but 1–19 digits is a
    ``RemoteHTTPError`` (a 5,000-digit length would otherwise be a raw ``ValueError``)."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or not value.isascii() or len(value) > 19:
        raise RemoteHTTPError(f"{where}: the server sent Content-Length {value[:40]!r}, not a byte count")
    return int(value)


def is_url(ref: object) -> bool:
    return isinstance(ref, str) and "://" in ref


def url_key(url: str) -> str:
    """A plain directory name for a URL's local copies: its last path part plus a hash of the whole URL."""
    name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "root"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "root"
    return f"{safe}-{hashlib.sha1(url.encode()).hexdigest()[:10]}"


class RemoteDirectory:
    """Files under one base URL: sizes, small whole-file gets, and range reads into caller buffers."""

    def __init__(self, url: str, retries: int = 3, timeout_s: float = 30.0, backoff_s: float = 0.05) -> None:
        if retries < 0 or timeout_s <= 0:
            raise ValueError(f"remote retries={retries} must be ≥ 0 and timeout_s={timeout_s} > 0")
        self.url = url.rstrip("/")
        self.retries, self.timeout_s, self.backoff_s = retries, timeout_s, backoff_s
        parts = urllib.parse.urlsplit(self.url)
        self.scheme = parts.scheme.lower()
        self._local = threading.local()
        self._fs: Any = None
        if self.scheme in ("http", "https"):
            self._host, self._port, self._path = parts.hostname or "", parts.port, parts.path
        else:
            import fsspec  # a core dependency; backends (s3fs, gcsfs) are the user's to install

            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.url)
            except (ImportError, ValueError) as exc:
                raise RemoteError(f"{self.url}: fsspec cannot open this URL ({exc}); install its backend") from exc

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _retry(self, what: str, op: Callable[[], T]) -> T:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return op()
            except (RemoteNotFoundError, RangeNotSupportedError, RemoteTooLargeError):
                raise  # retrying cannot help
            except (RemoteError, OSError, http.client.HTTPException) as exc:
                last = exc
                self._drop_connection()
                if attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
        if isinstance(last, RemoteError):
            raise type(last)(f"{last} (after {self.retries + 1} tries)") from last
        raise RemoteConnectionError(f"{what}: {type(last).__name__}: {last} (after {self.retries + 1} tries); "
                                    "check that the server is up and reachable") from last

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=self.timeout_s)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(self, method: str, name: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        path = f"{self._path}/{urllib.parse.quote(name)}"
        conn = self._conn()
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        where = f"{method} {self.url}/{name}"
        if resp.status in _MISSING_STATUS:
            resp.read()
            raise RemoteNotFoundError(f"{where}: HTTP {resp.status} {resp.reason}: the checkpoint (or this file "
                                      "of it) is not on the server; check the URL")
        if resp.status >= 400 or (resp.status >= 300 and resp.status != 304):
            resp.read()
            raise RemoteHTTPError(f"{where}: HTTP {resp.status} {resp.reason}")
        return resp

    # -- API ---------------------------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except RemoteNotFoundError:
            return False
        return True

    def size(self, name: str) -> int:
        """Bytes of one file (HEAD / fsspec info)."""
        if self._fs is not None:
            def op_fs() -> int:
                try:
                    return int(self._fs.size(f"{self._root}/{name}"))
                except FileNotFoundError as exc:
                    raise RemoteNotFoundError(f"{self.url}/{name} does not exist") from exc
            return self._retry(f"size of {self.url}/{name}", op_fs)

        def op() -> int:
            resp = self._request("HEAD", name, {})
            resp.read()
            length = content_length(resp.getheader("Content-Length"), f"HEAD {self.url}/{name}")
            if length is None:
                raise RemoteHTTPError(f"HEAD {self.url}/{name}: no Content-Length")
            return length
        return self._retry(f"HEAD {self.url}/{name}", op)

    def get(self, name: str, max_bytes: int | None = None) -> bytes:
        """A whole (small) file: indexes, manifests, configs; one larger than ``max_bytes`` is a
        ``RemoteTooLargeError`` (read no further than that)."""
        where = f"GET {self.url}/{name}"

        def too_large(size: int | str) -> RemoteTooLargeError:
            return RemoteTooLargeError(f"{where}: {size} bytes, more than loader.max_index_bytes={max_bytes}; "
                                       "raise it if the file is genuine")

        if self._fs is not None:
            def op_fs() -> bytes:
                try:
                    if max_bytes is not None and (size := int(self._fs.size(f"{self._root}/{name}"))) > max_bytes:
                        raise too_large(size)
                    return bytes(self._fs.cat_file(f"{self._root}/{name}"))
                except FileNotFoundError as exc:
                    raise RemoteNotFoundError(f"{self.url}/{name} does not exist") from exc
            return self._retry(where, op_fs)

        def op() -> bytes:
            resp = self._request("GET", name, {})
            length = content_length(resp.getheader("Content-Length"), where)
            if max_bytes is not None and length is not None and length > max_bytes:
                resp.close()
                self._drop_connection()
                raise too_large(length)
            data = resp.read() if max_bytes is None else resp.read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:
                resp.close()
                self._drop_connection()
                raise too_large(f"more than {max_bytes}")
            if length is not None and len(data) != length:
                raise RemoteShortReadError(f"{where}: {len(data)} of {length} bytes")
            return data
        return self._retry(f"GET {self.url}/{name}", op)

    def read_into(self, name: str, offset: int, view: memoryview) -> None:
        """Fill ``view`` with bytes [offset, offset + len(view)) of ``name`` (one range request, retried)."""
        want = len(view)
        if want == 0:
            return
        where = f"{self.url}/{name} bytes [{offset}, {offset + want})"
        if self._fs is not None:
            def op_fs() -> None:
                try:
                    data = self._fs.cat_file(f"{self._root}/{name}", start=offset, end=offset + want)
                except FileNotFoundError as exc:
                    raise RemoteNotFoundError(f"{self.url}/{name} does not exist") from exc
                if len(data) != want:
                    raise RemoteShortReadError(f"{where}: got {len(data)} bytes; the remote file is shorter than "
                                               "its index says")
                view[:] = data
            self._retry(where, op_fs)
            return

        def op() -> None:
            try:
                resp = self._request("GET", name, {"Range": f"bytes={offset}-{offset + want - 1}"})
            except RemoteHTTPError as exc:
                if "HTTP 416" in str(exc):
                    raise RemoteShortReadError(f"{where}: HTTP 416, the remote file is shorter than its index "
                                               "says") from exc
                raise
            if resp.status != 206:
                resp.close()
                self._drop_connection()
                raise RangeNotSupportedError(f"GET {where}: the server answered {resp.status} instead of 206 "
                                             "Partial Content: it ignores Range requests, which the remote tier "
                                             "needs (serve the directory with nginx, or any server with ranges)")
            content_range = resp.getheader("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                resp.close()
                raise RemoteHTTPError(f"GET {where}: Content-Range {content_range!r} does not match the request")
            done = 0
            try:
                while done < want:
                    n = resp.readinto(view[done:])
                    if not n:
                        break
                    done += n
            except http.client.IncompleteRead as exc:  # the body ended before its Content-Length
                resp.close()
                raise RemoteShortReadError(f"{where}: the body was cut short ({exc})") from exc
            if done != want:
                resp.close()
                raise RemoteShortReadError(f"{where}: the server sent {done} of {want} bytes")
        self._retry(where, op)


def remote_download(url: str, names: list[str], threads: int = 4, chunk_bytes: int = 16 << 20,
                    max_bytes: int | None = None, to_dir: Path | None = None) -> dict[str, Any]:
    """The remote ceiling: a plain parallel range download of the files' bytes to nowhere (``remote_download``).

    With ``to_dir``, each file is written there instead (pwrite from the same reused buffers): what fetching a
    checkpoint to local disk before loading it costs, the baseline for a loader that must keep a local copy."""
    remote = RemoteDirectory(url)
    jobs: list[tuple[str, int, int]] = []
    total = 0
    for name in names:
        size = remote.size(name)
        for off in range(0, size, chunk_bytes):
            n = min(chunk_bytes, size - off)
            if max_bytes is not None and total + n > max_bytes:
                break
            jobs.append((name, off, n))
            total += n
    fds: dict[str, int] = {}

    def work(i: int, buf: memoryview) -> None:
        name, off, n = jobs[i]
        remote.read_into(name, off, buf[:n])
        if name in fds:
            view, done = buf[:n], 0
            while done < n:
                done += os.pwrite(fds[name], view[done:], off + done)

    t0 = time.perf_counter()
    try:
        if to_dir is not None:
            fds.update({n: os.open(Path(to_dir) / n, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for n in names})
        parallel_for(len(jobs), threads, work, lambda: memoryview(bytearray(chunk_bytes)), "coldstart-download")
    finally:
        for fd in fds.values():
            os.close(fd)
    elapsed = time.perf_counter() - t0
    return {"gbps": total / elapsed / 1e9 if elapsed > 0 and total else None, "bytes": total, "s": elapsed,
            "threads": threads, "url": url}
