"""The ``compiled`` engine: a static KV cache allocated up front and the forward compiled with ``torch.compile`` at
the shapes it serves (the prompt's prefill and the one-token decode step), as gpt-fast and transformers' static-cache
generation do. Works on CPU with Inductor.

Every forward gets its positions and a cache-length attention mask as tensors (what ``generate`` passes), so a
position is data, not a shape or a Python int: one graph per served shape, none per position, and no graph break
where a model would read the cache's length (OPT's ``past_seen_tokens``). With a compile cache and ``precompile``,
each served shape is compiled ahead of time as one whole graph (Dynamo's ``aot_compile``) and stored with the cache,
so a warm start loads it instead of tracing the model again."""

from __future__ import annotations

import time
from typing import Any

import torch

from engines.base import KVCacheTooSmallError
from engines.compilecache import CompileCache, compile_key
from engines.kvcache import KVPlan, allocate, cache_kwarg, plan_kv
from engines.swap import WeightSwap

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
WARMUP_DECODE = 2


class PrecompileError(ValueError):
    """The model's forward cannot be compiled as one graph, or the backend's output cannot be stored."""


def forward_cache(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  cache: Any) -> torch.Tensor:
    """One forward over a static cache (transformers 5's ``cache`` keyword): what the engine compiles."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                 use_cache=True).logits


def forward_past(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Any) -> torch.Tensor:
    """The same for transformers 4.x (``past_key_values``)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 past_key_values=cache, use_cache=True).logits


FORWARDS = {"cache": forward_cache, "past_key_values": forward_past}


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
        self.forward = FORWARDS[cache_kwarg(model)]
        self.step: Any = self.forward  # what runs a forward: the function, compiled or not
        self.precompiled: dict[int, Any] = {}  # whole-graph forwards by the number of tokens they take
        self._mask: torch.Tensor | None = None  # 1 for every cache slot that holds a token (static: graphs read it)
        self._position: torch.Tensor | None = None  # the decode step's position (static, as the mask)
        self._token: int | None = None
        self.tokens: list[int] = []  # the first token and every decoded one
        self.saved_bytes = 0
        self._persisted: set[Any] = set()
        self._cc_spec = compile_cache
        self.cc: CompileCache | None = None
        self._held = 0  # tokens the cache holds
        self._fresh_aot = False  # whole-graph forwards compiled by this start (saved with its compile cache)
        self.swapper = WeightSwap(model)

    def alloc_kv(self) -> bool:
        dtype = next(self.model.parameters()).dtype
        self.plan = plan_kv(self.model.config, dtype, self.device, self.engine.max_batch, self.engine.max_seq,
                            self.engine.kv_memory_fraction, self.prompt_len + self.decode_tokens + 1)
        self.cache = allocate(self.model, self.plan, self.device)
        self._mask = torch.zeros(1, self.plan.max_seq, dtype=torch.long, device=self.device)
        self._position = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        return True

    def compile(self) -> bool:
        """Nothing compiled here (``compiled`` overrides)."""
        return False

    def capture(self) -> bool:
        """Nothing captured here (``graphs`` overrides)."""
        return False

    def _inputs(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask and positions of ``tokens`` new tokens after those the cache holds, written in place into the
        static buffers (outside any captured graph: a replay reads them, it does not write them)."""
        if self._mask is None or self._position is None:
            raise RuntimeError("the KV cache must be allocated before the engine runs a forward")
        held = self._held
        self._mask[:, held:held + tokens] = 1
        if tokens == 1:
            self._position.fill_(held)
            return self._mask, self._position
        return self._mask, torch.arange(held, held + tokens, device=self.device).unsqueeze(0)

    def _call(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        step = self.precompiled.get(int(ids.shape[1]), self.step)
        return step(self.model, ids, mask, positions, self.cache)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask, positions = self._inputs(int(ids.shape[1]))
        logits = self._call(ids, mask, positions)
        self._held += int(ids.shape[1])
        return logits

    def _reset(self) -> None:
        """An empty cache, its addresses kept."""
        if self.cache is not None:
            self.cache.reset()
        if self._mask is not None:
            self._mask.zero_()
        self._held = 0

    def _warm_up(self) -> None:
        """Run what the engine serves on zeros (a prefill at the prompt's length, then ``WARMUP_DECODE`` decode
        steps), then empty the cache: what a compiler traces happens here, not in the first token or the decode.
        Two decode steps: the second runs at another position, which compiles nothing more (positions are data)
        but would show here, not in the decode, if a model made them shapes again."""
        if self.cache is None:
            raise RuntimeError("the KV cache must be allocated before the engine warms up")
        with torch.inference_mode():
            self._forward(torch.zeros(1, self.prompt_len, dtype=torch.long, device=self.device))
            for _ in range(WARMUP_DECODE):
                self._forward(torch.zeros(1, 1, dtype=torch.long, device=self.device))
        sync(self.device)
        self._reset()

    @torch.inference_mode()
    def first_token(self, prompt: list[int]) -> int:
        if len(prompt) != self.prompt_len:
            raise ValueError(f"the engine was prepared for a {self.prompt_len}-token prompt, got {len(prompt)}")
        if self._held:
            self._reset()
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
        if self.plan is not None and self._held + tokens > self.plan.max_seq:
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
            self._reset()
        if len(ids) == 1 and self._held:
            return self._decode_step(ids[0])
        return int(self._forward(torch.tensor([ids], device=self.device))[0, -1].argmax().item())

    def binds(self) -> bool:
        """Whether a swap may point the parameters at the loaded tensors: no CUDA graph holds their addresses
        (``reduce-overhead`` records them in Inductor's graph trees)."""
        return self.engine.mode != "reduce-overhead"

    def swap_weights(self, weights: dict[str, torch.Tensor]) -> int:
        """New weights: bound in place of the old ones where nothing holds their addresses and the tensors are
        aligned, else copied into the same storage; the KV cache emptied in place (its addresses kept)."""
        done = self.swapper.swap(weights, may_bind=self.binds())
        self._reset()
        self._token, self.tokens = None, []
        return done

    def release_weights(self) -> None:
        self.swapper.release()

    def persist(self) -> None:
        """After the first token, outside every timed phase: save what was compiled (a cold or rebuilt cache), once."""
        if self.cc is not None and self.cc.folder not in self._persisted:
            self._persisted.add(self.cc.folder)
            try:
                functions = {f"forward-{n}": fn for n, fn in self.precompiled.items()} if self._fresh_aot else None
                self.saved_bytes = self.cc.save(functions) if self.cc.save_artifacts else 0
            finally:
                self.cc.end()

    def facts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"swap_mode": self.swapper.mode} if self.swapper.mode else {}
        if self.plan is not None:
            out.update({"kv_cache_tokens": self.plan.max_seq, "kv_cache_batch": self.plan.max_batch,
                        "kv_cache_bytes": self.plan.nbytes})
        if self.cc is not None:
            out.update({"compile_cache_status": self.cc.status, "compile_cache_restored_bytes": self.cc.restored_bytes,
                        "compile_cache_saved_bytes": self.saved_bytes, "compile_cache_dir": str(self.cc.folder)})
        return out


class CompiledRun(StaticRun):
    """``torch.compile`` of the forward, compiled by warm-up runs at the served shapes (the ``compile`` phase); with a
    compile cache and ``precompile``, each served shape compiled ahead of time as one graph and stored with it."""

    @torch.inference_mode()  # as every forward runs: restored guards are rebuilt for the dispatch state they see
    def compile(self) -> bool:
        shapes = sorted({self.prompt_len, 1})  # the tokens a forward takes: the prompt's prefill, a decode step
        if self._cc_spec:
            spec = self._cc_spec
            key = compile_key(spec["architecture"], str(spec["dtype"]), self.engine.name, self.engine.options(),
                              {"prompt_len": self.prompt_len, "max_seq": self.plan.max_seq if self.plan else 0,
                               "max_batch": self.engine.max_batch}, self.device)
            self.cc = CompileCache(spec["root"], str(spec["state"]), key, bool(spec.get("save", True)))
            needed = [f"forward-{n}" for n in shapes] if self.engine.precompile else []
            # an empty Inductor cache; warm: the stored artifact restored (timed: a warm start pays it)
            self.cc.begin(self.forward.__globals__, needed)
        torch.compiler.reset()  # nothing Dynamo compiled earlier in this process is reused
        compile_: Any = torch.compile  # its typed overloads predate isolate_recompiles
        self.step = compile_(self.forward, mode=self.engine.mode, backend=self.engine.backend,
                              fullgraph=self.engine.fullgraph, dynamic=self.engine.dynamic,
                              isolate_recompiles=True)  # another model's graphs never count against this one's
        if self.cc is not None and self.engine.precompile:
            restored = {n: self.cc.functions.get(f"forward-{n}") for n in shapes}
            self._fresh_aot = not all(restored.values())
            self.precompiled = self._precompile(shapes) if self._fresh_aot else restored
        self._warm_up()
        return True

    def _precompile(self, shapes: list[int]) -> dict[int, Any]:
        """Each served shape traced as one whole graph and compiled now (Dynamo's ``aot_compile``), keeping only
        the tensor guards (the engine picks the forward by shape itself; the model and cache are the same objects)."""
        options: dict[str, Any] = {"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe}
        if self.engine.mode != "default":
            if self.engine.backend != "inductor":
                raise PrecompileError(f"engine.precompile with engine.mode={self.engine.mode} needs "
                                      "engine.backend=inductor (or set engine.precompile=false)")
            options.update(torch._inductor.list_mode_options(self.engine.mode, self.engine.dynamic))
        compiler: Any = torch.compile(self.forward, fullgraph=True, backend=self.engine.backend,
                                      dynamic=self.engine.dynamic, options=options)
        out = {}
        with torch.inference_mode():
            for tokens in shapes:
                mask, positions = self._inputs(tokens)
                example = (self.model, torch.zeros(1, tokens, dtype=torch.long, device=self.device), mask,
                           positions, self.cache)
                try:
                    out[tokens] = compiler.aot_compile((example, {}))
                except torch._dynamo.exc.Unsupported as exc:
                    reason = str(exc).strip().splitlines()[0]
                    raise PrecompileError(f"engine.precompile: {type(self.model).__name__}'s forward is not one "
                                          f"graph ({reason}); set engine.precompile=false to compile it with graph "
                                          "breaks (a warm compile cache then still traces it)") from None
                except RuntimeError as exc:
                    if "SerializableCallable" not in str(exc):
                        raise
                    raise PrecompileError(f"engine.precompile: backend {self.engine.backend!r} compiles nothing "
                                          "that can be stored; use inductor or aot_eager, or set "
                                          "engine.precompile=false") from None
                finally:
                    self._reset()
        return out


class CompiledEngine:
    """``torch.compile`` with ``mode`` and ``backend`` as knobs, a static cache of ``max_batch × max_seq`` tokens
    (capped by ``kv_memory_fraction`` of the free memory). ``precompile`` (with a compile cache): the served shapes
    compiled ahead of time as whole graphs and stored, so a warm start skips Dynamo; without a compile cache (a
    real serverless instance) the forward is compiled at first use, as ``torch.compile`` does."""

    name = "compiled"
    compiles = True

    def __init__(self, mode: str = "default", backend: str = "inductor", fullgraph: bool = False, max_batch: int = 1,
                 max_seq: int = 256, kv_memory_fraction: float = 0.5, dynamic: bool | None = None,
                 precompile: bool = True) -> None:
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
        self.precompile = bool(precompile)

    def check(self, device: str) -> None:
        """Inductor compiles for CPU and CUDA."""

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode, "backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic,
                "precompile": self.precompile}

    def prepare(self, model: torch.nn.Module, device: torch.device, prompt_len: int, decode_tokens: int,
                compile_cache: dict[str, Any] | None = None) -> StaticRun:
        return CompiledRun(self, model, device, prompt_len, decode_tokens, compile_cache)
