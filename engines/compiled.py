"""The ``compiled`` engine: a static KV cache allocated up front and the forward compiled with ``torch.compile`` at
the shapes it serves (the prompt's prefill and the one-token decode step), as gpt-fast and transformers' static-cache
generation do. Works on CPU with Inductor. ``dynamic: null`` (Dynamo's default) lets a decode position that models
read as a Python int (OPT's ``past_seen_tokens``) become dynamic after one recompile, not one graph per position."""

from __future__ import annotations

import time
from typing import Any

import torch

from engines.base import KVCacheTooSmallError
from engines.compilecache import CompileCache, compile_key
from engines.kvcache import KVPlan, allocate, cache_kwarg, plan_kv
from engines.swap import copy_weights

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
WARMUP_DECODE = 2


def sync(device: torch.device) -> None:
    """Wait for the device (a phase ends when its work is done, not when it was queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StaticRun:
    """A model with a static KV cache: prefill and decode write into the same preallocated tensors."""

    def __init__(self, engine: Any, model: torch.nn.Module, device: torch.device, prompt_len: int,
                 decode_tokens: int, compile_cache: dict[str, Any] | None) -> None:
        self.engine, self.model, self.device = engine, model, device
        self.prompt_len, self.decode_tokens = int(prompt_len), int(decode_tokens)
        self.cache: Any = None
        self.plan: KVPlan | None = None
        self.step: Any = model  # what runs a forward: the model, its compiled wrapper
        self._kwarg = cache_kwarg(model)
        self._token: int | None = None
        self.tokens: list[int] = []  # the first token and every decoded one
        self.saved_bytes = 0
        self._persisted: set[Any] = set()
        self._cc_spec = compile_cache
        self.cc: CompileCache | None = None
        self._held = 0  # tokens the cache holds for feed()

    def alloc_kv(self) -> bool:
        dtype = next(self.model.parameters()).dtype
        self.plan = plan_kv(self.model.config, dtype, self.device, self.engine.max_batch, self.engine.max_seq,
                            self.engine.kv_memory_fraction, self.prompt_len + self.decode_tokens + 1)
        self.cache = allocate(self.model, self.plan, self.device)
        return True

    def compile(self) -> bool:
        """Nothing compiled here (``compiled`` overrides)."""
        return False

    def capture(self) -> bool:
        """Nothing captured here (``graphs`` overrides)."""
        return False

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.step(input_ids=ids, use_cache=True, **{self._kwarg: self.cache}).logits

    def _warm_up(self) -> None:
        """Run what the engine serves on zeros (a prefill at the prompt's length, then ``WARMUP_DECODE`` decode
        steps), then empty the cache: what a compiler traces happens here, not in the first token or the decode.
        Two decode steps, because a position that changes between steps is specialized once, then made dynamic
        (Dynamo's automatic dynamic shapes: one recompile, then none)."""
        if self.cache is None:
            raise RuntimeError("the KV cache must be allocated before the engine warms up")
        with torch.inference_mode():
            self._forward(torch.zeros(1, self.prompt_len, dtype=torch.long, device=self.device))
            for _ in range(WARMUP_DECODE):
                self._forward(torch.zeros(1, 1, dtype=torch.long, device=self.device))
        sync(self.device)
        self.cache.reset()

    @torch.inference_mode()
    def first_token(self, prompt: list[int]) -> int:
        if len(prompt) != self.prompt_len:
            raise ValueError(f"the engine was prepared for a {self.prompt_len}-token prompt, got {len(prompt)}")
        logits = self._forward(torch.tensor([prompt], device=self.device))
        self._token = int(logits[0, -1].argmax().item())
        self.tokens = [self._token]
        return self._token

    def _decode_step(self, token: int) -> int:
        logits = self._forward(torch.tensor([[token]], device=self.device))
        return int(logits[0, -1].argmax().item())

    @torch.inference_mode()
    def decode(self, tokens: int) -> list[float]:
        if self._token is None:
            raise RuntimeError("decode() before first_token()")
        if self.plan is not None and self.prompt_len + tokens + 1 > self.plan.max_seq:
            raise ValueError(f"decode of {tokens} tokens overflows the {self.plan.max_seq}-token KV cache")
        times = []
        for _ in range(tokens):
            t0 = time.perf_counter()
            self._token = self._decode_step(self._token)
            times.append(time.perf_counter() - t0)
            self.tokens.append(self._token)
        return times

    @torch.inference_mode()
    def feed(self, ids: list[int], reset: bool = False) -> int:
        if self.cache is None or self.plan is None:
            raise RuntimeError("feed() before alloc_kv(): the engine has no KV cache yet")
        held = 0 if reset else self._held
        if held + len(ids) > self.plan.max_seq:  # before anything changes: a refused feed leaves the cache as it was
            raise KVCacheTooSmallError(
                f"the static KV cache holds {self.plan.max_seq} tokens; {held} held + {len(ids)} new do not fit "
                "(raise engine.max_seq or engine.kv_memory_fraction, or shorten the requests)")
        if reset:
            self.cache.reset()
            self._held = 0
        if len(ids) == 1 and self._held:
            token = self._decode_step(ids[0])
        else:
            token = int(self._forward(torch.tensor([ids], device=self.device))[0, -1].argmax().item())
        self._held += len(ids)
        return token

    def swap_weights(self, weights: dict[str, torch.Tensor]) -> int:
        """New weights into the same storage; the KV cache emptied in place (its addresses kept)."""
        copied = copy_weights(self.model, weights)
        if self.cache is not None:
            self.cache.reset()
        self._token, self.tokens, self._held = None, [], 0
        return copied

    def persist(self) -> None:
        """After the first token, outside every timed phase: save what was compiled (a cold or rebuilt cache), once."""
        if self.cc is not None and self.cc.folder not in self._persisted:
            self._persisted.add(self.cc.folder)
            try:
                self.saved_bytes = self.cc.save() if self.cc.save_artifacts else 0
            finally:
                self.cc.end()

    def facts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.plan is not None:
            out.update({"kv_cache_tokens": self.plan.max_seq, "kv_cache_batch": self.plan.max_batch,
                        "kv_cache_bytes": self.plan.nbytes})
        if self.cc is not None:
            out.update({"compile_cache_status": self.cc.status, "compile_cache_restored_bytes": self.cc.restored_bytes,
                        "compile_cache_saved_bytes": self.saved_bytes, "compile_cache_dir": str(self.cc.folder)})
        return out


class CompiledRun(StaticRun):
    """``torch.compile`` of the forward, compiled by warm-up runs at the served shapes (the ``compile`` phase)."""

    def compile(self) -> bool:
        if self._cc_spec:
            spec = self._cc_spec
            shapes = {"prompt_len": self.prompt_len, "max_seq": self.plan.max_seq if self.plan else 0,
                      "max_batch": self.engine.max_batch}
            key = compile_key(spec["architecture"], str(spec["dtype"]), self.engine.name, self.engine.options(),
                              shapes, self.device)
            self.cc = CompileCache(spec["root"], str(spec["state"]), key, bool(spec.get("save", True)))
            self.cc.begin()  # an empty Inductor cache; warm: the stored artifact restored (timed: a warm start pays it)
        torch.compiler.reset()  # nothing Dynamo compiled earlier in this process is reused
        self.step = torch.compile(self.model, mode=self.engine.mode, backend=self.engine.backend,
                                  fullgraph=self.engine.fullgraph, dynamic=self.engine.dynamic)
        self._warm_up()
        return True


class CompiledEngine:
    """``torch.compile`` with ``mode`` and ``backend`` as knobs, a static cache of ``max_batch × max_seq`` tokens
    (capped by ``kv_memory_fraction`` of the free memory)."""

    name = "compiled"
    compiles = True

    def __init__(self, mode: str = "default", backend: str = "inductor", fullgraph: bool = False, max_batch: int = 1,
                 max_seq: int = 256, kv_memory_fraction: float = 0.5, dynamic: bool | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"engine.mode={mode!r}; choose one of {MODES}")
        if not backend:
            raise ValueError("engine.backend is empty; choose inductor, aot_eager or eager "
                             "(torch._dynamo.list_backends())")
        if int(max_batch) < 1 or int(max_seq) < 2:
            raise ValueError(f"engine.max_batch={max_batch}, engine.max_seq={max_seq}; need ≥ 1 and ≥ 2")
        if not 0 < float(kv_memory_fraction) <= 1:
            raise ValueError(f"engine.kv_memory_fraction={kv_memory_fraction}; it must be in (0, 1]")
        self.mode, self.backend, self.fullgraph = mode, backend, bool(fullgraph)
        self.dynamic = None if dynamic is None else bool(dynamic)
        self.max_batch, self.max_seq, self.kv_memory_fraction = int(max_batch), int(max_seq), float(kv_memory_fraction)

    def check(self, device: str) -> None:
        """Inductor compiles for CPU and CUDA."""

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode, "backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}

    def prepare(self, model: torch.nn.Module, device: torch.device, prompt_len: int, decode_tokens: int,
                compile_cache: dict[str, Any] | None = None) -> StaticRun:
        return CompiledRun(self, model, device, prompt_len, decode_tokens, compile_cache)
