"""``torch.load(mmap=True)``: storages map the file; pages are read when first touched."""

from __future__ import annotations

from typing import ClassVar

from loaders.torch import TorchLoader


class TorchMmapLoader(TorchLoader):
    """The PyTorch baseline with ``mmap=True`` (lazy: the harness's materialization pays the reads)."""

    mmap: ClassVar[bool] = True
