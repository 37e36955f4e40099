"""Swapping a new model's weights into a prepared engine (:class:`WeightSwap`). A copy goes into the parameters'
existing storage, so captured CUDA graphs, which hold those addresses, stay valid. A bind points the parameters at
the loaded tensors themselves (no copy), for engines whose code takes the parameters as inputs at every call (eager,
Inductor without CUDA graphs); releasing lets the loaded memory go again at unload (a pool worker's host arena is
leased until the last tensor on it is freed)."""

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


def _copy(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    copied = 0
    for dst, src in pairs:
        dst.copy_(src, non_blocking=src.device.type == "cpu" and dst.device.type == "cuda")
        copied += dst.numel() * dst.element_size()
    if any(dst.device.type == "cuda" for dst, _ in pairs):
        torch.cuda.synchronize()
    return copied


def _bindable(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Every new tensor on its model tensor's device, contiguous and ``ALIGN_BYTES``-aligned (a native loader's
    views are; a safetensors mmap's need not be)."""
    return all(src.device == dst.device and src.is_contiguous() and src.data_ptr() % ALIGN_BYTES == 0
               for dst, src in pairs)


class WeightSwap:
    """One prepared run's swaps: the new tensors bound in place of the model's where the run allows it and they are
    aligned, else copied into the model's own storage; what a swap bound is let go at :meth:`release`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.mode: str | None = None  # how the last swap brought the weights in: bind or copy
        self._bound: list[torch.Tensor] = []  # the model's tensors pointing at loaded memory

    @torch.no_grad()
    def swap(self, weights: dict[str, torch.Tensor], may_bind: bool) -> int:
        """The bytes swapped in. ``may_bind``: nothing holds the parameters' addresses (no captured graph)."""
        self.release()  # a copy never writes into memory an earlier swap bound
        pairs = _pairs(self.model, weights)
        if not (may_bind and _bindable(pairs)):
            self.mode = "copy"
            return _copy(pairs)
        for dst, src in pairs:
            dst.data = src
        self._bound, self.mode = [dst for dst, _ in pairs], "bind"
        return sum(src.numel() * src.element_size() for _, src in pairs)

    @torch.no_grad()
    def release(self) -> None:
        """Let the loaded memory go: each bound tensor gets storage of its own again, allocated and not touched (no
        resident memory until a later copy fills it, and none when the next swap binds)."""
        for t in self._bound:
            t.data = torch.empty_like(t, memory_format=torch.contiguous_format)
        self._bound = []


def require_cuda(engine: str, device: str, alternatives: str) -> None:
    """``engine`` captures CUDA graphs: refuse any other device in one line naming the alternatives."""
    if not str(device).startswith("cuda"):
        raise EngineUnsupportedError(f"engine {engine} captures CUDA graphs and needs device=cuda (this run: "
                                     f"device={device}); on this device choose {alternatives}")
