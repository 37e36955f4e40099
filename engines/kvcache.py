"""The static KV cache an engine allocates up front: ``max_batch × max_seq`` tokens, sized from the model and the
device's free memory as serving engines do (vLLM gives the cache a fraction of the memory left after the weights)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from engines.base import KVCacheTooSmallError


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV-cache bytes per token over all layers: 2 (K, V) × layers × KV heads × head dim × element size."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def free_bytes(device: torch.device) -> int:
    """Memory the cache may take: CUDA's free device memory, else the host's available memory (``MemAvailable``)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


@dataclass(frozen=True)
class KVPlan:
    """How many tokens the static cache holds and what it costs."""

    max_batch: int
    max_seq: int
    bytes_per_token: int
    free_bytes: int

    @property
    def nbytes(self) -> int:
        return self.max_batch * self.max_seq * self.bytes_per_token


def plan_kv(config: Any, dtype: torch.dtype, device: torch.device, max_batch: int, max_seq: int,
            memory_fraction: float, needed_tokens: int) -> KVPlan:
    """``max_seq`` capped by the model's positions and by what ``memory_fraction`` of the free memory holds for
    ``max_batch`` sequences; fewer than ``needed_tokens`` (prompt + decode) is a :class:`KVCacheTooSmallError`."""
    per_token = kv_bytes_per_token(config, dtype)
    free = free_bytes(device)
    fits = int(memory_fraction * free) // (per_token * max_batch)
    positions = int(getattr(config, "max_position_embeddings", max_seq) or max_seq)
    seq = min(max_seq, positions, fits)
    if seq < needed_tokens:
        raise KVCacheTooSmallError(
            f"the static KV cache holds {seq} tokens per sequence (max_seq={max_seq}, model positions {positions}, "
            f"{memory_fraction:.0%} of {free / 2**30:.1f} GiB free fits {fits} at {per_token} B/token × "
            f"max_batch={max_batch}); the prompt and decode need {needed_tokens}: raise engine.max_seq or "
            "engine.kv_memory_fraction, or lower decode_tokens")
    return KVPlan(max_batch, seq, per_token, free)


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward's keyword for a KV cache: ``cache`` (transformers 5), ``past_key_values`` (4.x)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The cache a forward returned (``cache`` in transformers 5, ``past_key_values`` in 4.x)."""
    return getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)


def allocate(model: torch.nn.Module, plan: KVPlan, device: torch.device) -> Any:
    """A transformers ``StaticCache`` of ``plan``'s size with every layer's tensors allocated now (early
    initialization: the addresses are fixed before anything is compiled or captured)."""
    from transformers import StaticCache

    config: Any = model.config
    text = config.get_text_config(decoder=True)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    dtype = next(model.parameters()).dtype
    cache: Any = StaticCache(config=config, max_cache_len=plan.max_seq)
    cache.early_initialization(plan.max_batch, kv_heads, head_dim, dtype, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:  # loaded means materialized: zero pages are only real once written
        for layer in cache.layers:
            layer.keys.fill_(0)
            layer.values.fill_(0)
    return cache
