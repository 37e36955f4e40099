"""``torch.load`` (weights_only) of a torch checkpoint: sharded ``pytorch_model-*.bin`` with index, or ``model.pt``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import torch

from loaders.base import BaseLoader, LoadResult, shard_files


class TorchLoader(BaseLoader):
    """The PyTorch baseline: unpickle each shard (``weights_only=True``) on CPU, then move to the device."""

    formats: ClassVar[tuple[str, ...]] = ("torch_bin", "torch_pt")
    mmap: ClassVar[bool] = False

    def files(self, checkpoint_dir: Path) -> list[Path]:
        return shard_files(checkpoint_dir, "pytorch_model.bin.index.json", ("pytorch_model.bin", "model.pt"), ".bin")

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        state_dict: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        for path in self.files(checkpoint_dir):
            state_dict.update(torch.load(path, map_location="cpu", weights_only=True, mmap=self.mmap))
        t_read = time.perf_counter()
        if device.type != "cpu":
            state_dict = {k: v.to(device) for k, v in state_dict.items()}
        return LoadResult(state_dict, {"read_s": t_read - t0, "h2d_s": time.perf_counter() - t_read})
