"""fastsafetensors: whole shards copied to the device in bulk (GPUDirect Storage on CUDA where usable), then sliced."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from loaders.base import BaseLoader, LoaderError, LoadResult, shard_files

GDS_CHOICES = ("auto", True, False)
GDS_COPIER = "GdsFileCopier"  # fastsafetensors' cuFile copier class; any other means it read without GDS


class GdsUnavailableError(LoaderError):
    """``gds=true`` was asked for, but the device or host cannot do GPUDirect Storage."""


class FastsafetensorsLoader(BaseLoader):
    """``fastsafe_open(shards, device=..., nogds=...)`` then ``get_tensor(k)`` for every key.

    ``gds``: ``auto`` uses GPUDirect Storage on CUDA when fastsafetensors can (its own checks: cuFile, the
    nvidia-fs device node) and its pread + bounce-buffer path otherwise (always on CPU); ``true`` requires GDS
    and fails with :class:`GdsUnavailableError` if it would not run; ``false`` never uses it.
    ``max_copy_block_bytes`` bounds one bulk copy (fastsafetensors' ``max_copy_block_size``).
    """

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)
    requires: ClassVar[tuple[str, ...]] = ("fastsafetensors",)
    extra: ClassVar[str] = "peers"

    def __init__(self, gds: bool | str = "auto", max_copy_block_bytes: int = 16 << 30) -> None:
        if gds not in GDS_CHOICES or (gds != "auto" and not isinstance(gds, bool)):
            raise ValueError(f"loader.gds={gds!r}; choose auto, true or false")
        if isinstance(max_copy_block_bytes, bool) or not isinstance(max_copy_block_bytes, int) \
                or max_copy_block_bytes < 1:
            raise ValueError(f"loader.max_copy_block_bytes={max_copy_block_bytes!r}; must be a positive integer")
        self.gds = gds
        self.max_copy_block_bytes = max_copy_block_bytes

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        from fastsafetensors import fastsafe_open

        if self.gds is True and device.type != "cuda":
            raise GdsUnavailableError(f"loader.gds=true needs a CUDA device, got device={device}; use gds=auto")
        nogds = device.type != "cuda" or self.gds is False
        files = shard_files(checkpoint_dir, "model.safetensors.index.json", ("model.safetensors",), ".safetensors")
        t0 = time.perf_counter()
        with fastsafe_open([str(p) for p in files], device=str(device), nogds=nogds,
                           max_copy_block_size=self.max_copy_block_bytes) as f:
            self._check_gds(f)
            state_dict = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
        return LoadResult(state_dict, {"read_s": time.perf_counter() - t0})

    def _check_gds(self, handle: Any) -> None:
        copier = getattr(handle.loader, "copier_class", None)
        used = getattr(copier, "__name__", "")
        if self.gds is True and used != GDS_COPIER:
            raise GdsUnavailableError(f"loader.gds=true but fastsafetensors fell back to {used or 'another copier'} "
                                      "(no cuFile, no /dev/nvidia-fs0, or an unsupported GPU); use gds=auto")
