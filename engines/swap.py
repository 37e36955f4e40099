"""Swapping a new model's weights into a prepared engine: copies into the parameters' existing storage, so compiled
code and captured CUDA graphs, which hold those addresses, stay valid."""

from __future__ import annotations

import torch

from engines.base import EngineUnsupportedError


class WeightSwapError(ValueError):
    """The new tensors do not fit the prepared model (a name it lacks or lacks a name it has, a shape, a dtype)."""


@torch.no_grad()
def copy_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Copy ``weights`` (the model's own parameter and buffer names, tied aliases optional) into ``model`` in place;
    the bytes copied. Every persistent tensor of the model must be given, with its shape and dtype."""
    own: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=True))
    own.update({n: b for n, b in model.named_buffers() if n in weights})
    missing = sorted(set(own) - set(weights))
    if missing:
        raise WeightSwapError(f"the new weights lack {len(missing)} of the prepared model's tensors, "
                              f"e.g. {missing[:3]}")
    aliases = set(dict(model.named_parameters(remove_duplicate=False))) - set(own)
    extra = sorted(set(weights) - set(own) - aliases)
    if extra:
        raise WeightSwapError(f"the prepared model has no tensors {extra[:3]}: another architecture takes a fresh "
                              "engine")
    copied = 0
    for name, dst in own.items():
        src = weights[name]
        if src.shape != dst.shape or src.dtype != dst.dtype:
            raise WeightSwapError(f"{name}: new {tuple(src.shape)} {src.dtype}, "
                                  f"prepared {tuple(dst.shape)} {dst.dtype}")
        dst.copy_(src, non_blocking=src.device.type == "cpu" and dst.device.type == "cuda")
        copied += dst.numel() * dst.element_size()
    if any(p.device.type == "cuda" for p in own.values()):
        torch.cuda.synchronize()
    return copied


def require_cuda(engine: str, device: str, alternatives: str) -> None:
    """``engine`` captures CUDA graphs: refuse any other device in one line naming the alternatives."""
    if not str(device).startswith("cuda"):
        raise EngineUnsupportedError(f"engine {engine} captures CUDA graphs and needs device=cuda (this run: "
                                     f"device={device}); on this device choose {alternatives}")
