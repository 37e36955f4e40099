"""``safetensors.torch.load_file`` straight to the device, shard by shard."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file

from loaders.base import BaseLoader, LoadResult, shard_files


class SafetensorsLoader(BaseLoader):
    """The safetensors baseline: on CPU a lazy mmap per shard, on CUDA a copy from pageable memory."""

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        files = shard_files(checkpoint_dir, "model.safetensors.index.json", ("model.safetensors",), ".safetensors")
        state_dict: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        for path in files:
            state_dict.update(load_file(path, device=str(device)))
        return LoadResult(state_dict, {"read_s": time.perf_counter() - t0})
