"""What a pool worker hosts: a process that did its imports and created the device context at start, then runs
one cold start per assignment and reports whether its memory came back (``runtimes.pool``)."""

from __future__ import annotations

import time
from typing import Any

from runtimes.warm import (
    init_device,
    prebuild_models,
    preimport,
    prepare_engines,
    release_memory,
    rss_bytes,
    start_arena,
    stop_arena,
    warm_forward,
)


class TrialWorker:
    """Built by the pool (imports + device init happen here, before any cold start); ``trial`` runs one.

    ``arena_bytes`` / ``arena_ring_bytes``: the host arena it keeps for its cold starts (``loaders.arena``),
    faulted in (pinned, for the ring on CUDA) here, before the idle RSS is taken, and freed by ``close``."""

    def __init__(self, device: str = "cpu", modules: list[str] | None = None,
                 models: list[dict[str, Any]] | None = None, threads: int | None = None,
                 warmup_dtype: str | None = None, prebuild_dtype: str | None = None, arena_bytes: int = 0,
                 arena_ring_bytes: int = 0, engines: list[dict[str, Any]] | None = None,
                 prompt_ids: list[int] | None = None, decode_tokens: int = 0) -> None:
        self.device = device
        self.import_s = preimport(modules or [], models or [])
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.device_init_s = init_device(device)
        self.warmup_s = warm_forward(models or [], warmup_dtype, device) if warmup_dtype else 0.0
        self.prebuild_s = prebuild_models(models or [], prebuild_dtype) if prebuild_dtype else 0.0
        self.arena = start_arena(arena_bytes, arena_ring_bytes, device)
        self.prepared: dict[str, tuple[Any, Any]] = {}
        self.prepare_s = 0.0
        if engines and prebuild_dtype and prompt_ids:  # held for the worker's life: part of its idle memory
            self.prepared, self.prepare_s = prepare_engines(models or [], engines, prebuild_dtype, device,
                                                            prompt_ids, decode_tokens)
        release_memory(device)
        self.idle_rss_bytes = rss_bytes()
        self.uses = 0

    def _arena(self) -> dict[str, Any]:
        return self.arena.describe() if self.arena is not None else {}

    def info(self) -> dict[str, Any]:
        """What the worker's start cost (imports, device init, its arena) and its idle RSS."""
        return {"import_s": self.import_s, "device_init_s": self.device_init_s, "warmup_s": self.warmup_s,
                "prebuild_s": self.prebuild_s, "prepare_s": self.prepare_s, "prepared": len(self.prepared),
                "idle_rss_bytes": self.idle_rss_bytes, "uses": self.uses, **self._arena()}

    def close(self) -> None:
        """The worker is recycling: its arena's memory goes back now."""
        stop_arena(self.arena)
        self.arena = None

    def trial(self, spec: dict[str, Any], spawn_ts: float) -> dict[str, Any]:
        """One cold start (``harness.trial.run_trial``), then unload: everything it built is dropped and the RSS
        after that is reported beside the idle RSS, so the pool can tell whether memory came back."""
        handoff = time.time()
        from harness.trial import run_trial

        self.uses += 1
        out = run_trial(spec, spawn_ts, handoff, self.prepared)
        release_memory(self.device)
        out["worker"] = {"idle_rss_bytes": self.idle_rss_bytes, "rss_after_unload_bytes": rss_bytes(),
                         "uses": self.uses, "import_s": self.import_s, "device_init_s": self.device_init_s,
                         "warmup_s": self.warmup_s, "prebuild_s": self.prebuild_s, "prepare_s": self.prepare_s,
                         **self._arena()}
        return out
