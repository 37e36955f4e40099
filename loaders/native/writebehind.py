"""Writing a remote checkpoint's SSD-tier copy after the load returns, from the bytes already in a pool worker's arena.

A remote load into an arena (``runtimes/``: the ``pool`` runtime's pre-faulted host memory) used to write every chunk
through to the SSD tier inside the load, so the load went at the disk's write speed, not the network's: on the
2-core CI VM 1.5 GB/s against a 2.5–3.0 GB/s download (results/reference/cold_path_cpu). The arena holds every byte
until the model is unloaded, so the copy can be written from it afterwards: the load ends when the bytes are in
memory, and a thread writes the SSD-tier files (O_DIRECT where aligned), records the chunk sums, marks the copy
verified and publishes it. The lease on the arena lasts until that thread lets go of its views, so a later cold
start never overwrites bytes still being written. A failed copy is logged and removed (the next load fetches the
checkpoint again). Copies are registered per process (``PENDING``, by the entry's path): every loader object of the
process waits for a copy of the entry it is about to read or drop, and the load's result carries a ``pending``
wait that callers (``harness.trial``, the serverless instance) run outside their timed region before reporting, so
no trial's copy is still being written while the next one loads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("coldstart.loaders.native")


class WriteBehind:
    """Copies being written in the background, one thread each, by the entry's path; ``wait`` joins them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self.written_s: dict[str, float] = {}  # key → seconds its copy took, once written
        self.failed: dict[str, str] = {}  # key → why its copy was not kept

    def submit(self, key: str, write: Callable[[], None]) -> None:
        """Run ``write`` (which writes and publishes the copy of ``key``) on a thread of its own. Not a daemon: a
        process that ends right after its load still finishes the copy before it exits."""
        thread = threading.Thread(target=self._run, args=(key, write), name=f"write-behind-{key[-40:]}", daemon=False)
        with self._lock:
            self._threads[key] = thread
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: write the copy now, inline
            with self._lock:
                self._threads.pop(key, None)
            log.warning("could not start a thread to write %s behind the load (%s): writing it now", key, exc)
            self._run(key, write)

    def _run(self, key: str, write: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            write()
        except BaseException as exc:  # a thread's error reaches nobody: say it, and the next load fetches again
            self.failed[key] = f"{type(exc).__name__}: {exc}"
            log.warning("the SSD-tier copy of %s was not kept (%s); the next load fetches it again", key, exc)
        else:
            self.written_s[key] = time.perf_counter() - t0
            log.info("wrote the SSD-tier copy of %s behind the load in %.2f s", key, self.written_s[key])
        finally:
            with self._lock:
                if self._threads.get(key) is threading.current_thread():
                    del self._threads[key]

    def pending(self) -> list[str]:
        """Keys whose copies are still being written."""
        with self._lock:
            return sorted(self._threads)

    def wait(self, key: str | None = None, timeout_s: float | None = None) -> bool:
        """Wait for the copy of ``key`` (every copy: None); whether none is left pending."""
        with self._lock:
            threads = [t for k, t in self._threads.items() if key is None or k == key]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in threads:
            t.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return not any(t.is_alive() for t in threads)


PENDING = WriteBehind()  # this process's copies being written (every NativeLoader object shares it)
