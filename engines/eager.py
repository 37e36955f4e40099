"""The ``eager`` engine: the model's own forward, no compile, no static cache (transformers' growing cache)."""

from __future__ import annotations

import time
from typing import Any

import torch

from engines.kvcache import cache_kwarg, returned_cache
from engines.swap import WeightSwap


class EagerRun:
    """A built model run eagerly: the first token is today's prefill; decode extends its dynamic cache."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self._cache: Any = None
        self._kwarg = cache_kwarg(model)
        self._token: int | None = None
        self.tokens: list[int] = []  # the first token and every decoded one
        self.swapper = WeightSwap(model)

    def alloc_kv(self) -> bool:
        """No static cache: transformers grows one per forward."""
        return False

    def compile(self) -> bool:
        """Nothing is compiled."""
        return False

    def capture(self) -> bool:
        """Nothing is captured."""
        return False

    def first_token(self, prompt: list[int]) -> int:
        self._token = self.feed(prompt, reset=True)
        self.tokens = [self._token]
        return self._token

    def decode(self, tokens: int) -> list[float]:
        if self._token is None:
            raise RuntimeError("decode() before first_token()")
        times = []
        for _ in range(tokens):
            t0 = time.perf_counter()
            self._token = self.feed([self._token])
            times.append(time.perf_counter() - t0)
            self.tokens.append(self._token)
        return times

    @torch.inference_mode()
    def feed(self, ids: list[int], reset: bool = False) -> int:
        if reset:
            self._cache = None
        cache = {self._kwarg: self._cache} if self._cache is not None else {}
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, **cache)
        self._cache = returned_cache(out)
        return int(out.logits[0, -1].argmax().item())

    def swap_weights(self, weights: dict[str, torch.Tensor]) -> int:
        """Bound where the loaded tensors are aligned (the eager forward reads the parameters at every call), else
        copied."""
        self._cache, self._token, self.tokens = None, None, []
        return self.swapper.swap(weights, may_bind=True)

    def release_weights(self) -> None:
        self.swapper.release()

    def persist(self) -> None:
        """Nothing to keep."""

    def facts(self) -> dict[str, Any]:
        return {"swap_mode": self.swapper.mode} if self.swapper.mode else {}


class EagerEngine:
    """Today's cold start: the eager transformers forward (the baseline every other engine's tokens must equal)."""

    name = "eager"
    compiles = False

    def check(self, device: str) -> None:
        """Every device runs eagerly."""

    def options(self) -> dict[str, Any]:
        return {}

    def prepare(self, model: torch.nn.Module, device: torch.device, prompt_len: int, decode_tokens: int,
                compile_cache: dict[str, Any] | None = None) -> EagerRun:
        return EagerRun(model, device)
