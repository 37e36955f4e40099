"""One model instance, hosted in a fresh worker process: a real cold start, then real prefill and decode.

The controller gets its process from the run's runtime (``runtimes/``): ``fresh`` starts it for this cold start
(the process start and the imports are part of it); ``pool`` hands out one started earlier, whose construction
imported everything, created the device context and ran a warm-up forward pass. The controller calls ``load``
once (weights, build, then the engine's set-up steps when the run names an engine: ``engines/``), then serves
requests token by token with a KV cache (the engine's, when it has one):
``begin`` (prefill the prompt, first token), ``step`` (decode n more), and ``adopt`` (re-prefill tokens a
request produced elsewhere — how a live migration's destination catches up, ServerlessLLM §5.3).
Token timestamps are ``time.perf_counter`` offsets from the start of each call, so no clock crosses machines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from runtimes.warm import (
    init_device,
    prebuild_models,
    preimport,
    release_memory,
    rss_bytes,
    start_arena,
    stop_arena,
    warm_forward,
)


class InstanceLoadError(RuntimeError):
    """The instance could not load its checkpoint or build its model (bad checkpoint, wrong shapes)."""


class ModelInstance:
    """A fresh process's instance builds nothing at construction; a pool's (``modules``/``models`` given) does its
    imports, device init and warm-up there. ``load`` does the rest of the cold start; ``unload`` gives the model up
    and reports whether the process's memory came back (the pool reuses it only then)."""

    def __init__(self, model: dict[str, Any] | None = None, dtype: str = "fp32", device: str = "cpu",
                 modules: list[str] | None = None, models: list[dict[str, Any]] | None = None,
                 warmup_dtype: str | None = None, prebuild_dtype: str | None = None,
                 threads: int | None = None, arena_bytes: int = 0, arena_ring_bytes: int = 0) -> None:
        self.model_cfg = dict(model) if model else None
        self.dtype, self.device_name = dtype, device
        self.model: Any = None
        self.run: Any = None  # the engine's run (engines.base.EngineRun) serving the model, when load named one
        self.owner: int | None = None  # the request whose tokens the engine's single KV cache holds
        self.sessions: dict[int, dict[str, Any]] = {}
        self.uses = 0
        self.idle_rss_bytes: int | None = None
        self.arena: Any = None  # a pool worker's host arena, released by close()
        if modules or models:  # a pool worker: everything a cold start would import, now
            preimport(modules or [], models or [])
            if threads:  # the slot's thread budget, as a fresh instance gets it from its worker's start
                import torch

                torch.set_num_threads(int(threads))
            init_device(device)
            if warmup_dtype:
                warm_forward(models or [], warmup_dtype, device)
            if prebuild_dtype:
                prebuild_models(models or [], prebuild_dtype)
            self.arena = start_arena(arena_bytes, arena_ring_bytes, device)  # a pool's host arena (runtimes/warm.py)
            release_memory(device)
            self.idle_rss_bytes = rss_bytes()

    def load(self, checkpoint: str, loader: dict[str, Any], model: dict[str, Any] | None = None,
             engine: dict[str, Any] | None = None, prompt_tokens: int = 16) -> dict[str, Any]:
        """Load ``checkpoint`` with the ``loader`` config and build ``model`` (default: the constructor's); then, when
        ``engine`` (a ``conf/engine`` config) is given, its set-up steps prepared for ``prompt_tokens``-token prompts
        (``kv_alloc_s``, ``compile_s``, ``graph_capture_s``: 0 for a step the engine lacks), after which requests
        are served through it. Returns the phase times (seconds)."""
        t0 = time.time()
        import torch

        import harness.modelbuild as mb
        from harness.trial import ENGINE_MARKS, instantiate

        cfg = model or self.model_cfg
        if cfg is None:
            raise InstanceLoadError("load() needs a model config (none was given at construction)")
        if self.model is not None:
            raise InstanceLoadError("this instance already holds a model: unload() it first")
        self.uses += 1
        try:
            spec = instantiate(cfg)
            mb.import_model_class(spec)
            t_imports = time.time()
            device = torch.device(self.device_name)
            init_device(self.device_name)
            t_device = time.time()
            result = instantiate(loader).load(checkpoint if "://" in checkpoint else Path(checkpoint), device)
            mb.materialize(result.state_dict, device)
            t_weights = time.time()
            self.model = mb.build_model(spec, self.dtype, result.state_dict, device).eval()
            t_built = time.time()
            engine_phases: dict[str, Any] = {}
            if engine is not None:
                eng = instantiate(engine)
                eng.check(self.device_name)
                run = eng.prepare(self.model, device, int(prompt_tokens), 0, None)
                last = t_built
                for step, do in zip(ENGINE_MARKS, (run.alloc_kv, run.compile, run.capture), strict=True):
                    now = time.time() if do() else last  # a step the engine lacks: 0 s
                    engine_phases[f"{step}_s"], last = now - last, now
                self.run, self.owner = run, None
                engine_phases.update(engine=eng.name, **run.facts())
        except Exception as exc:
            self.model = self.run = None
            raise InstanceLoadError(f"loading {checkpoint} failed: {type(exc).__name__}: {exc}") from exc
        self.device = device
        phases = {"imports_s": t_imports - t0, "device_init_s": t_device - t_imports, "weights_s": t_weights - t_device,
                  "model_build_s": t_built - t_weights, **engine_phases,
                  "bytes": sum(int(t.numel() * t.element_size()) for t in result.state_dict.values()),
                  "bytes_by_tier": dict(result.bytes_by_tier), "uses": self.uses}
        phases["settle_s"] = result.settle()  # after every phase: a copy the loader still writes behind the load
        return phases

    def unload(self) -> dict[str, Any]:
        """Drop the model and every session, give the memory back; the RSS now beside the idle RSS."""
        self.sessions.clear()
        self.model = self.run = self.owner = None
        release_memory(self.device_name)
        return {"idle_rss_bytes": self.idle_rss_bytes, "rss_after_unload_bytes": rss_bytes(), "uses": self.uses}

    def begin(self, request_id: int, prompt: list[int]) -> dict[str, Any]:
        """Prefill ``prompt`` and produce the first token; returns ``{"tokens": [t], "offsets_s": [dt]}``."""
        t0 = time.perf_counter()
        if self.run is not None:
            s = self.sessions[request_id] = {"ids": list(prompt), "fed": 0, "cache": None}
            next_id = self._feed(request_id, s, len(prompt))
            s["ids"].append(next_id)
            return {"tokens": [next_id], "offsets_s": [time.perf_counter() - t0]}
        next_id, cache = self._forward(prompt, None)
        self.sessions[request_id] = {"ids": [*prompt, next_id], "cache": cache}
        return {"tokens": [next_id], "offsets_s": [time.perf_counter() - t0]}

    def step(self, request_id: int, n: int) -> dict[str, Any]:
        """Decode ``n`` more tokens greedily, one forward pass each over the KV cache."""
        s = self._session(request_id)
        t0 = time.perf_counter()
        tokens, offsets = [], []
        for _ in range(n):
            if self.run is not None:
                next_id = self._feed(request_id, s, len(s["ids"]))
            else:
                next_id, s["cache"] = self._forward(s["ids"][-1:], s["cache"])
            s["ids"].append(next_id)
            tokens.append(next_id)
            offsets.append(time.perf_counter() - t0)
        return {"tokens": tokens, "offsets_s": offsets}

    def adopt(self, request_id: int, ids: list[int]) -> dict[str, Any]:
        """Take over a request whose tokens so far are ``ids`` (prompt + generated): prefill those not yet in
        this instance's cache (all but the newest, which the next ``step`` feeds). Called in rounds."""
        t0 = time.perf_counter()
        s = self.sessions.setdefault(request_id, {"ids": [], "fed": 0, "cache": None})
        if self.run is not None:
            have = s["fed"] if self.owner == request_id else 0
            if ids[:have] != s["ids"][:have]:
                raise ValueError(f"request {request_id}: adopted tokens diverge from the {have} already prefilled")
            s["ids"] = list(ids)
            if len(ids) - 1 > have:
                self._feed(request_id, s, len(ids) - 1)
            return {"prefilled": max(len(ids) - 1 - have, 0), "s": time.perf_counter() - t0}
        have = max(len(s["ids"]) - 1, 0) if s["cache"] is not None else 0
        if ids[:have] != s["ids"][:have]:
            raise ValueError(f"request {request_id}: adopted tokens diverge from the {have} already prefilled")
        todo = ids[have:-1]
        if todo:
            _, s["cache"] = self._forward(todo, s["cache"])
        s["ids"] = list(ids)
        return {"prefilled": len(todo), "s": time.perf_counter() - t0}

    def finish(self, request_id: int) -> None:
        """Drop a request's KV cache."""
        self.sessions.pop(request_id, None)
        if self.owner == request_id:
            self.owner = None

    def close(self) -> None:
        """Give everything up, the process's host arena too (a worker that ends leaves no arena installed)."""
        self.sessions.clear()
        self.model = self.run = self.owner = None
        stop_arena(self.arena)
        self.arena = None

    def _feed(self, request_id: int, s: dict[str, Any], upto: int) -> int:
        """Through the engine: the session's tokens up to ``upto`` into its single KV cache (the ones not in it yet;
        all of them, from an empty cache, when it holds another request's), and the greedy next token."""
        if self.owner != request_id:
            s["fed"] = 0
        self.owner = None  # a feed that fails midway leaves no request owning the cache
        token = int(self.run.feed(s["ids"][s["fed"]:upto], reset=s["fed"] == 0))
        s["fed"], self.owner = upto, request_id
        return token

    def _session(self, request_id: int) -> dict[str, Any]:
        if request_id not in self.sessions:
            raise KeyError(f"request {request_id} has no session on this instance (begin or adopt it first)")
        return self.sessions[request_id]

    def _forward(self, ids: list[int], cache: Any) -> tuple[int, Any]:
        import torch

        if self.model is None:
            raise InstanceLoadError("the instance has no model: call load() first")
        with torch.inference_mode():
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            out = self.model(input_ids=x, past_key_values=cache, use_cache=True)
            return int(out.logits[0, -1].argmax().item()), out.past_key_values


def prompt_tokens(request_id: int, n: int, vocab_size: int) -> list[int]:
    """A request's prompt: ``n`` deterministic token ids (no tokenizer; varied per request)."""
    return [1 + (request_id * 7919 + 31 * k) % (vocab_size - 1) for k in range(max(n, 1))]
