"""The engine contract: what every ``conf/engine/<name>.yaml`` ``_target_`` builds, and the steps a cold start times.

A cold start runs, after the model is built, an engine's set-up steps in a fixed order, each timed as a phase of its
own (``harness.trial``): ``kv_alloc`` (the static KV cache, sized up front), ``compile`` (Dynamo tracing and code
generation, forced by warm-up runs at the shapes the engine serves), ``graph_capture`` (decode steps recorded as CUDA
graphs), then the first token. A step an engine does not have takes no time. The cache comes before compilation
because the compiled step reads it: Inductor specializes on the cache's shape and static address, so tracing
without it would compile a graph that the serving cache then invalidates.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


class EngineUnsupportedError(ValueError):
    """The engine cannot run on this device (``graphs`` without CUDA); the message names the alternatives."""


class KVCacheTooSmallError(ValueError):
    """The free device memory holds fewer KV-cache tokens than the prompt and the decode need."""


@runtime_checkable
class EngineRun(Protocol):
    """One model prepared by an engine: the set-up steps (each timed by the caller), the first token, the decode."""

    tokens: list[int]  # the first token and every decoded one since

    # Each set-up step returns whether it did anything: a step the engine does not have is a phase of 0 s.
    def alloc_kv(self) -> bool: ...

    def compile(self) -> bool: ...

    def capture(self) -> bool: ...

    def first_token(self, prompt: list[int]) -> int:
        """Prefill ``prompt`` (batch of one) and return the greedy next token; waits for the device."""
        ...

    def decode(self, tokens: int) -> list[float]:
        """Greedy decode ``tokens`` more tokens after :meth:`first_token`; the seconds of each step."""
        ...

    def feed(self, ids: list[int], reset: bool = False) -> int:
        """Serving (a real serverless instance): run ``ids`` after what the KV cache holds (``reset``: from an empty
        cache) and return the greedy next token. Any prompt length that fits the cache; one token after a prefill is
        the decode step (a captured graph's replay where there is one); a compiled engine may compile a prompt
        length other than the one it was prepared for once, at first use."""
        ...

    def swap_weights(self, state_dict: dict[str, torch.Tensor]) -> int:
        """Give this run a new model's tensors and reset the KV cache; the bytes swapped in. Where code holds the
        parameters' addresses (a captured graph) they are copied into the same storage; elsewhere the parameters
        may point at the loaded tensors themselves (``facts()['swap_mode']``: ``copy`` or ``bind``)."""
        ...

    def release_weights(self) -> None:
        """At unload (a pool worker, after the cold start): let go of loaded memory a swap bound."""
        ...

    def persist(self) -> None:
        """After the first token, outside every timed phase: keep what later starts reuse (compile artifacts)."""
        ...

    def facts(self) -> dict[str, Any]:
        """What the run did besides its timed steps (KV-cache tokens and bytes, compile-cache status)."""
        ...


@runtime_checkable
class Engine(Protocol):
    """Builds an :class:`EngineRun` for a built model. ``check`` refuses a device before anything starts."""

    name: str
    compiles: bool  # whether compile caches apply (an engine that compiles nothing is one cell of that axis)

    def check(self, device: str) -> None: ...

    def options(self) -> dict[str, Any]:
        """The knobs that change what the engine compiles (part of a compile-cache key)."""
        ...

    def prepare(self, model: torch.nn.Module, device: torch.device, prompt_len: int, decode_tokens: int,
                compile_cache: dict[str, Any] | None = None) -> EngineRun: ...
