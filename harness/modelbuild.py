"""Building a zoo model from a loaded state dict (meta construction + assign) and producing its first token."""

from __future__ import annotations

import copy
from typing import Any

import torch

from harness.zoo import ModelSpec, dequantize, fixed_prompt

PAGE = 4096


def materialize(state_dict: dict[str, torch.Tensor], device: torch.device) -> int:
    """Make a load real: on CUDA wait for every copy; on CPU touch every page of every tensor's storage.

    An mmap that read nothing is not a load (DESIGN.md, measurement protocol). Returns the bytes covered.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return sum(t.numel() * t.element_size() for t in state_dict.values())
    seen: set[int] = set()
    covered = 0
    acc = 0
    for t in state_dict.values():
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        raw = torch.empty(0, dtype=torch.uint8).set_(storage)  # the whole storage as bytes
        acc += int(raw[::PAGE].sum()) + int(raw[-1])  # one read per page faults every page in
        covered += storage.nbytes()
    return covered if acc >= 0 else 0


def import_model_class(spec: ModelSpec) -> type:
    """Import the architecture's modeling module (transformers loads it lazily on first use)."""
    return spec.model_class()


class ModelBuildError(RuntimeError):
    """The loaded tensors do not fit the model (names or shapes), or a buffer could not be rebuilt."""


# Meta-device models built ahead of any cold start (a pool worker's start, ``prebuild``), by (spec, dtype): a cold
# start then copies one instead of constructing the architecture again. A fresh process has none.
_SKELETONS: dict[tuple[ModelSpec, str], torch.nn.Module] = {}


def prebuild(spec: ModelSpec, dtype: str) -> float:
    """Construct ``spec`` on the meta device once and keep it for :func:`build_model`; the seconds it took."""
    import time

    t0 = time.perf_counter()
    _SKELETONS[(spec, dtype)] = spec.meta_model(dtype)
    return time.perf_counter() - t0


def prebuilt(spec: ModelSpec, dtype: str) -> torch.nn.Module | None:
    """The meta skeleton :func:`prebuild` kept for (spec, dtype), if any."""
    return _SKELETONS.get((spec, dtype))


def forget_prebuilt() -> None:
    """Drop every prebuilt skeleton (the next builds construct again)."""
    _SKELETONS.clear()


def build_model(spec: ModelSpec, dtype: str, state_dict: dict[str, torch.Tensor],
                device: torch.device) -> torch.nn.Module:
    """Construct on the meta device (or copy a :func:`prebuild` one), ``load_state_dict(assign=True)``, re-tie,
    rebuild non-persistent buffers."""
    skeleton = _SKELETONS.get((spec, dtype))
    model = copy.deepcopy(skeleton) if skeleton is not None else spec.meta_model(dtype)
    weights = spec.model_names(dequantize(state_dict) if dtype == "int8" else state_dict, model)
    result = model.load_state_dict(weights, strict=False, assign=True)
    tie: Any = model.tie_weights
    if result.unexpected_keys:
        raise ModelBuildError(f"{spec.name}: tensors the model does not have: {result.unexpected_keys[:5]}")
    tie()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise ModelBuildError(f"{spec.name}: the checkpoint lacks {len(still_meta)} parameters, e.g. {still_meta[:3]}")
    _rebuild_buffers(model, device)
    return model


def _rebuild_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (rotary ``inv_freq``) are not in checkpoints: rebuild their modules on the device.

    Such modules are small and built from the model config alone, so a fresh one replaces the meta one.
    """
    stale = [name for name, module in model.named_modules()
             if any(b.is_meta for b in module.buffers(recurse=False))]
    for name in stale:
        module = model.get_submodule(name)
        config = getattr(module, "config", None)
        try:
            with device:
                fresh = type(module)(config)
        except Exception as exc:
            raise ModelBuildError(f"module {name} ({type(module).__name__}) keeps buffers on the meta device and "
                                  f"cannot be rebuilt from its config: {exc}") from exc
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)


def prompt_ids(vocab_size: int, tokens: int) -> torch.Tensor:
    """The fixed prompt (``harness.zoo.fixed_prompt``: ids 1..tokens mod the vocabulary), batch of one."""
    return torch.tensor([fixed_prompt(vocab_size, tokens)])


@torch.inference_mode()
def first_token(model: torch.nn.Module, device: torch.device, tokens: int = 16,
                ids: list[int] | None = None) -> int:
    """Prefill the prompt (``ids``, else the fixed one of ``tokens`` ids) and return the greedy next token
    (``.item()`` waits for the device)."""
    config: Any = model.config
    prompt = torch.tensor([ids]) if ids else prompt_ids(int(config.vocab_size), tokens)
    logits = model(input_ids=prompt.to(device)).logits
    return int(logits[0, -1].argmax().item())
