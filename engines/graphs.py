"""The ``graphs`` engine (CUDA only): a static KV cache, the one-token decode step recorded as a CUDA graph and
replayed per token (optionally compiled first); the prefill runs eagerly at the prompt's length."""

from __future__ import annotations

from typing import Any

import torch

from engines.compiled import MODES, CompiledEngine, CompiledRun, StaticRun, sync
from engines.swap import require_cuda

WARMUP_STEPS = 3  # decode steps on a side stream before capture (cuBLAS workspaces, allocator pools), as vLLM does


class GraphsRun(CompiledRun):
    """Decode by replaying one captured graph over static input and output tensors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.graph: Any = None
        self._ids: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    def compile(self) -> bool:
        return super().compile() if self.engine.compile else False

    def capture(self) -> bool:
        if self.cache is None:
            raise RuntimeError("the KV cache must be allocated before a graph is captured")
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_STEPS):
                self._forward(ids)
        torch.cuda.current_stream(self.device).wait_stream(side)
        sync(self.device)
        self._reset()
        mask, position = self._inputs(1)  # static buffers, written outside the graph: each replay reads them anew
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            logits = self._call(ids, mask, position)
        sync(self.device)
        self._reset()  # capture records the step's work without running it; the cache is emptied anyway
        self.graph, self._ids, self._logits = graph, ids, logits
        return True

    def binds(self) -> bool:
        """Never: the captured graph reads the parameters at the addresses it recorded."""
        return False

    def _decode_step(self, token: int) -> int:
        if self.graph is None or self._ids is None or self._logits is None:
            return super()._decode_step(token)
        self._ids.fill_(token)
        self._inputs(1)  # the step's position and mask, in place
        self.graph.replay()
        self._held += 1
        return int(self._logits[0, -1].argmax().item())


class GraphsEngine(CompiledEngine):
    """CUDA graphs of the decode step (``compile: true`` compiles the step with ``mode``/``backend`` first)."""

    name = "graphs"
    compiles = True

    def __init__(self, compile: bool = False, mode: str = "default", backend: str = "inductor",
                 fullgraph: bool = False, max_batch: int = 1, max_seq: int = 256,
                 kv_memory_fraction: float = 0.5, dynamic: bool | None = None, precompile: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"engine.mode={mode!r}; choose one of {MODES}")
        super().__init__(mode, backend, fullgraph, max_batch, max_seq, kv_memory_fraction, dynamic, precompile)
        self.compile = bool(compile)
        self.compiles = self.compile

    def check(self, device: str) -> None:
        require_cuda(self.name, device, "engine=eager or engine=compiled (torch.compile with Inductor)")

    def options(self) -> dict[str, Any]:
        return {**super().options(), "compile": self.compile}

    def prepare(self, model: torch.nn.Module, device: torch.device, prompt_len: int, decode_tokens: int,
                compile_cache: dict[str, Any] | None = None) -> StaticRun:
        self.check(str(device))
        return GraphsRun(self, model, device, prompt_len, decode_tokens, compile_cache if self.compile else None)
