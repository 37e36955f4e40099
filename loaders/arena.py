"""A process's host arena: memory faulted in once and reused by every cold start, so no load pays first touches.

A fresh process must fault in every page a load writes: on the 2-core CI VM that first touch costs about as much as
reading the page from the disk. A long-lived process (a ``pool`` worker, ``runtimes/``) instead installs one arena at
start, sized for the largest model it serves and faulted in there (so it is part of the worker's idle RSS and the
pool's recycle rule still compares like with like); a loader that fills one destination buffer (the native loader)
leases it instead of mapping fresh memory. On CUDA the arena also keeps the loader's pinned staging ring, so it is
pinned once per worker instead of once per cold start.

A lease is the arena's first ``nbytes`` as one tensor; it ends when every tensor viewing it is gone (the model was
unloaded), and only then is the arena handed out again. Nothing is zeroed between leases: the loader overwrites
every byte of every tensor it returns (tests/loaders/test_arena.py holds it to that).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

log = logging.getLogger("coldstart.arena")

ALIGNMENT = 4096
SLACK_BYTES = 8 << 20  # per model: partition and file alignment, safetensors headers
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


class ArenaClosedError(RuntimeError):
    """The arena was closed (its worker is recycling); no lease can be taken from it."""


def arena_bytes(tensor_bytes: Iterable[int], slack: int = SLACK_BYTES) -> int:
    """Bytes an arena needs for a checkpoint of tensors of these sizes: each tensor starts on a 4 KiB boundary in a
    native checkpoint, plus ``slack`` for partition alignment and headers."""
    return sum(-(-int(n) // ALIGNMENT) * ALIGNMENT for n in tensor_bytes) + slack


class HostArena:
    """``nbytes`` of host memory faulted in at construction (``huge``: transparent huge pages where the kernel
    allows), handed out one lease at a time; ``ring`` keeps staging buffers (pinned on CUDA) across loads."""

    def __init__(self, nbytes: int, huge: bool = False, pin_ring: bool = False) -> None:
        if nbytes < 0:
            raise ValueError(f"arena nbytes={nbytes} must be ≥ 0")
        self.nbytes = -(-int(nbytes) // ALIGNMENT) * ALIGNMENT
        self.huge, self.pin_ring = bool(huge), bool(pin_ring)
        self._lock = threading.Lock()
        self._leased = False
        self._closed = False
        self.leases = 0
        self._ring: torch.Tensor | None = None
        self._ring_busy = False
        self.ring_allocations = 0
        t0 = time.perf_counter()
        self._mm = mmap.mmap(-1, max(self.nbytes, ALIGNMENT), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            with contextlib.suppress(OSError):
                self._mm.madvise(mmap.MADV_HUGEPAGE if self.huge else mmap.MADV_NOHUGEPAGE)
        try:
            self._mm.madvise(MADV_POPULATE_WRITE)
        except OSError:  # before Linux 5.14: write one byte per page
            view = memoryview(self._mm)
            for off in range(0, len(self._mm), mmap.PAGESIZE):
                view[off] = 0
            view.release()
        self.fault_s = time.perf_counter() - t0

    @property
    def busy(self) -> bool:
        """A lease is out (some tensor still views the arena)."""
        return self._leased

    def lease(self, nbytes: int) -> torch.Tensor | None:
        """The arena's first ``nbytes`` as a flat uint8 tensor, or None while another lease is out or when it is too
        small (the caller then allocates fresh memory). The lease ends when the tensor and every view of it die."""
        with self._lock:
            if self._closed:
                raise ArenaClosedError("the host arena was closed; the worker that owned it is recycling")
            if self._leased or nbytes > self.nbytes:
                return None
            self._leased = True
            self.leases += 1
        arr = np.frombuffer(self._mm, dtype=np.uint8, count=nbytes) if nbytes else np.empty(0, dtype=np.uint8)
        weakref.finalize(arr, self._end_lease)  # fires when torch frees the last storage that holds ``arr``
        return torch.from_numpy(arr)

    def _end_lease(self) -> None:
        with self._lock:
            self._leased = False

    def ring(self, count: int, nbytes: int, device: torch.device | None = None) -> list[torch.Tensor] | None:
        """``count`` staging buffers of ``nbytes``, views of one block kept for the process's life (pinned for CUDA
        copies when the arena was made with ``pin_ring``), or None while another load holds them. A request larger
        than the kept block replaces it (pinned once more, then kept)."""
        need = count * -(-nbytes // ALIGNMENT) * ALIGNMENT
        with self._lock:
            if self._closed:
                raise ArenaClosedError("the host arena was closed; the worker that owned it is recycling")
            if self._ring_busy:
                return None
            if self._ring is None or self._ring.numel() < need:
                if self.pin_ring and torch.cuda.is_available():  # page-locked pages: page-aligned
                    self._ring = torch.empty(need, dtype=torch.uint8, pin_memory=True)
                else:  # an anonymous mapping: page-aligned, as O_DIRECT reads into the ring need (torch.empty: 64 B)
                    ring_map = mmap.mmap(-1, need, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                    self._ring = torch.frombuffer(ring_map, dtype=torch.uint8)  # keeps the mapping alive
                self._ring.fill_(0)  # faulted in now, not by the first load's reads
                self.ring_allocations += 1
            self._ring_busy = True
            block = self._ring
        step = -(-nbytes // ALIGNMENT) * ALIGNMENT
        return [block[i * step : i * step + nbytes] for i in range(count)]

    def release_ring(self) -> None:
        """The load that held the ring is done with it."""
        with self._lock:
            self._ring_busy = False

    def ring_bytes(self) -> int:
        return 0 if self._ring is None else int(self._ring.numel())

    def close(self) -> None:
        """Give the memory back (a recycling worker's last act); later leases raise ``ArenaClosedError``."""
        with self._lock:
            self._closed = True
            self._ring = None
            leased = self._leased
        if leased:
            log.warning("closing a host arena while a lease is out: its memory goes when the last tensor does")
            return
        with contextlib.suppress(BufferError):  # an exported view still alive: freed with it
            self._mm.close()

    def describe(self) -> dict[str, Any]:
        return {"arena_bytes": self.nbytes, "arena_huge": self.huge, "arena_fault_s": self.fault_s,
                "arena_leases": self.leases, "arena_ring_bytes": self.ring_bytes(),
                "arena_ring_allocations": self.ring_allocations}


_CURRENT: HostArena | None = None


def install(arena: HostArena | None) -> HostArena | None:
    """Make ``arena`` the process's arena (None removes it); returns the previous one."""
    global _CURRENT
    previous, _CURRENT = _CURRENT, arena
    return previous


def current() -> HostArena | None:
    """The process's arena, if a long-lived runtime installed one."""
    return _CURRENT
