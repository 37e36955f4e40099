"""``transformers`` ``from_pretrained`` of the checkpoint directory, as most users load a model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from safetensors import safe_open

from loaders.base import BaseLoader, LoadResult, UnsupportedCheckpointError, shard_files


class HfLoader(BaseLoader):
    """``AutoModelForCausalLM.from_pretrained``; its own model construction counts in the load time."""

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        from transformers import AutoModelForCausalLM

        files = shard_files(checkpoint_dir, "model.safetensors.index.json", ("model.safetensors",), ".safetensors")
        stored: set[str] = set()
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys())  # safe_open is not iterable
                stored.update(names)
                dtypes = {f.get_slice(k).get_dtype() for k in names}  # header only, no data read
            if "I8" in dtypes:
                raise UnsupportedCheckpointError(
                    f"{checkpoint_dir}: int8 weight-only tensors; from_pretrained would cast them silently. "
                    "Use another loader for dtype=int8")
        config = json.loads((checkpoint_dir / "config.json").read_text())
        dtype_name = config.get("dtype") or config.get("torch_dtype") or "float16"  # transformers 5 / 4.x
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=getattr(torch, str(dtype_name)))
        t_read = time.perf_counter()
        if device.type != "cpu":
            cast(Any, model).to(device)  # in place (transformers' typing wraps .to)
        state_dict = _as_stored(model, stored)
        return LoadResult(state_dict, {"read_s": t_read - t0, "h2d_s": time.perf_counter() - t_read})


def _as_stored(model: Any, stored: set[str]) -> dict[str, torch.Tensor]:
    """The model's tensors under the names the files give them: a checkpoint saved without the base model's prefix
    (``decoder.…`` for ``model.decoder.…``) is mapped back, as ``from_pretrained`` mapped it on the way in."""
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    out = {}
    for k, v in model.state_dict().items():
        if k in stored:
            out[k] = v
        elif prefix and k.startswith(prefix + ".") and k[len(prefix) + 1 :] in stored:
            out[k[len(prefix) + 1 :]] = v
    return out
