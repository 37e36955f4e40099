"""Run:ai Model Streamer: C++ reader threads stream the safetensors shards into host buffers, then to the device."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch

from loaders.base import BaseLoader, LoadResult, shard_files

# The streamer's C++ core reads its knobs from the environment when a streamer starts.
CONCURRENCY_ENV = "RUNAI_STREAMER_CONCURRENCY"
CHUNK_BYTES_ENV = "RUNAI_STREAMER_CHUNK_BYTESIZE"
MEMORY_LIMIT_ENV = "RUNAI_STREAMER_MEMORY_LIMIT"  # read by its Python layer when a stream starts


@contextmanager
def scoped_environ(updates: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore (or remove) each one."""
    before = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RunaiLoader(BaseLoader):
    """``SafetensorsStreamer().stream_files(shards, device=...)`` and every tensor of ``get_tensors()``.

    ``concurrency``, ``chunk_bytes`` and ``memory_limit_bytes`` become ``RUNAI_STREAMER_CONCURRENCY``,
    ``RUNAI_STREAMER_CHUNK_BYTESIZE`` and ``RUNAI_STREAMER_MEMORY_LIMIT`` (host ring budget; -1 unlimited, 0 the
    largest tensor) for this load only; ``None`` leaves the library's default or what the environment says.
    Tensors are requested ``owned=True``: the streamer then never recycles a buffer a returned tensor views, so
    tensors stay valid after the streamer closes even when its ring is smaller than the model (tested).
    """

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)
    requires: ClassVar[tuple[str, ...]] = ("runai_model_streamer",)
    extra: ClassVar[str] = "peers"

    def __init__(self, concurrency: int | None = 16, chunk_bytes: int | None = 2 << 20,
                 memory_limit_bytes: int | None = None) -> None:
        for key, value, low in (("concurrency", concurrency, 1), ("chunk_bytes", chunk_bytes, 1),
                                ("memory_limit_bytes", memory_limit_bytes, -1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"loader.{key}={value!r}; must be an integer >= {low} or null (library default)")
        self.concurrency = concurrency
        self.chunk_bytes = chunk_bytes
        self.memory_limit_bytes = memory_limit_bytes

    def environment(self) -> dict[str, str]:
        """The streamer's environment variables this loader sets during a load."""
        values = {CONCURRENCY_ENV: self.concurrency, CHUNK_BYTES_ENV: self.chunk_bytes,
                  MEMORY_LIMIT_ENV: self.memory_limit_bytes}
        return {k: str(v) for k, v in values.items() if v is not None}

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        from runai_model_streamer import SafetensorsStreamer

        files = shard_files(checkpoint_dir, "model.safetensors.index.json", ("model.safetensors",), ".safetensors")
        state_dict: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        with scoped_environ(self.environment()), SafetensorsStreamer() as streamer:
            streamer.stream_files([str(p) for p in files], device=str(device), owned=True)
            for name, tensor in streamer.get_tensors():
                state_dict[name] = tensor
        return LoadResult(state_dict, {"read_s": time.perf_counter() - t0})
