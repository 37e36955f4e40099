"""Swapping a new model's weights into a prepared engine. ``copy_weights`` copies into the parameters' existing
storage, so captured CUDA graphs, which hold those addresses, stay valid. ``bind_weights`` points the parameters at
the loaded tensors themselves (no copy), for engines whose code takes the parameters as inputs at every call (eager,
Inductor without CUDA graphs); ``release_weights`` lets the loaded memory go again at unload (a pool worker's host
arena is leased until the last tensor on it is freed)."""

from __future__ import annotations

import torch

from engines.base import EngineUnsupportedError


class WeightSwapError(ValueError):
    """The new tensors do not fit the prepared model (a name it lacks or lacks a name it has, a shape, a dtype)."""


ALIGN_BYTES = 64  # what Inductor's CPU kernels assume of an input (a misaligned one is copied at every call)


def _pairs(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(the model's tensor, the new one) for every persistent tensor of the model, checked to fit."""
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
    pairs = []
    for name, dst in own.items():
        src = weights[name]
        if src.shape != dst.shape or src.dtype != dst.dtype:
            raise WeightSwapError(f"{name}: new {tuple(src.shape)} {src.dtype}, "
                                  f"prepared {tuple(dst.shape)} {dst.dtype}")
        pairs.append((dst, src))
    return pairs


@torch.no_grad()
def copy_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Copy ``weights`` (the model's own parameter and buffer names, tied aliases optional) into ``model`` in place;
    the bytes copied. Every persistent tensor of the model must be given, with its shape and dtype."""
    copied = 0
    pairs = _pairs(model, weights)
    for dst, src in pairs:
        dst.copy_(src, non_blocking=src.device.type == "cpu" and dst.device.type == "cuda")
        copied += dst.numel() * dst.element_size()
    if any(dst.device.type == "cuda" for dst, _ in pairs):
        torch.cuda.synchronize()
    return copied


def can_bind(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    """Whether :func:`bind_weights` may take ``weights`` as they are: every tensor on the model's device,
    contiguous and ``ALIGN_BYTES``-aligned (a native loader's views are; a safetensors mmap's need not be)."""
    return all(src.device == dst.device and src.is_contiguous() and src.data_ptr() % ALIGN_BYTES == 0
               for dst, src in _pairs(model, weights))


@torch.no_grad()
def bind_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Point ``model``'s tensors at ``weights`` (checked as :func:`copy_weights` checks them), copying nothing; the
    model's tensors now bound. Only for code that reads the parameters at every call: a captured graph keeps the old
    addresses."""
    bound = []
    for dst, src in _pairs(model, weights):
        dst.data = src
        bound.append(dst)
    return bound


@torch.no_grad()
def release_weights(bound: list[torch.Tensor]) -> None:
    """Let the loaded memory ``bound`` tensors point at go: each gets storage of its own again, allocated and not
    touched (no resident memory until a later copy fills it, and none when the next swap binds)."""
    for t in bound:
        t.data = torch.empty_like(t, memory_format=torch.contiguous_format)


def require_cuda(engine: str, device: str, alternatives: str) -> None:
    """``engine`` captures CUDA graphs: refuse any other device in one line naming the alternatives."""
    if not str(device).startswith("cuda"):
        raise EngineUnsupportedError(f"engine {engine} captures CUDA graphs and needs device=cuda (this run: "
                                     f"device={device}); on this device choose {alternatives}")
