"""What a pre-initialized runtime does before it is handed a cold start: imports, device context, memory checks."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import os
import time
from collections.abc import Iterable
from typing import Any

# What every cold start imports whatever its loader and model (the loaders' and models' own modules are added from
# the run's config by the runtimes).
BASE_MODULES = ("torch", "transformers", "harness.trial", "harness.modelbuild", "harness.checkpoints")


def modules_of(configs: Iterable[dict[str, Any]]) -> list[str]:
    """The modules behind ``_target_`` configs (a loader's class module), in order, without repeats."""
    out: list[str] = []
    for cfg in configs:
        target = str(cfg.get("_target_", ""))
        module = target.rpartition(".")[0]
        if module and module not in out:
            out.append(module)
    return out


def preimport(modules: Iterable[str], models: Iterable[dict[str, Any]] = ()) -> float:
    """Import ``modules`` and the transformers modeling module of each model config; the seconds it took.

    Touches no tensor: a forkserver's zygote runs this and must not start torch's thread pools before it forks.
    """
    t0 = time.time()
    for name in modules:
        importlib.import_module(name)
    if models:
        import harness.modelbuild as mb
        from harness.trial import instantiate

        for cfg in models:
            mb.import_model_class(instantiate(cfg))
    return time.time() - t0


def init_device(device: str) -> float:
    """Create the device context (CUDA: init, a first allocation, a sync); the seconds it took. CPU: nothing."""
    import torch

    t0 = time.time()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.init()
        torch.empty(1, device=dev)
        torch.cuda.synchronize(dev)
    return time.time() - t0


def warm_forward(models: Iterable[dict[str, Any]], dtype: str, device: str, tokens: int = 16) -> float:
    """Run the fixed prompt through a one-layer copy of each architecture with uninitialized weights; the seconds
    it took. What a process sets up on its first forward pass (thread pools, kernel choices, lazy modeling code)
    is then done before any cold start, as Medusa materializes its first-run state offline."""
    import torch

    import harness.modelbuild as mb
    from harness.trial import instantiate

    t0 = time.time()
    dev = torch.device(device)
    for cfg in models:
        spec = instantiate(cfg)
        one_layer = spec.variant(f"{spec.name}-warmup", num_hidden_layers=1)
        model = one_layer.build(dtype, dev)
        mb.first_token(model, dev, tokens)
        del model
    return time.time() - t0


def prebuild_models(models: Iterable[dict[str, Any]], dtype: str) -> float:
    """Construct each architecture on the meta device once (``harness.modelbuild.prebuild``): a cold start in this
    process then copies it instead of building it. The seconds it took."""
    import harness.modelbuild as mb
    from harness.trial import instantiate

    return sum(mb.prebuild(instantiate(cfg), dtype) for cfg in models)


def prepare_engines(models: Iterable[dict[str, Any]], engines: Iterable[dict[str, Any]], dtype: str, device: str,
                    prompt_ids: list[int], decode_tokens: int) -> tuple[dict[str, tuple[Any, Any]], float]:
    """For each architecture × engine: the model built on the device (its weights are placeholders a cold start
    overwrites), then the engine's set-up (KV cache, compile, graph capture) done now, before any cold start. The
    prepared engines by ``harness.trial.engine_key`` and the seconds it took."""
    import tempfile

    import torch

    from harness.trial import engine_key, instantiate

    t0 = time.time()
    dev = torch.device(device)
    prepared: dict[str, tuple[Any, Any]] = {}
    scratch = tempfile.mkdtemp(prefix="coldstart-pool-compile-")
    for cfg in models:
        spec = instantiate(cfg)
        for engine_cfg in engines:
            engine = instantiate(engine_cfg)
            model = spec.build(dtype, dev)
            with torch.no_grad():
                for p in model.parameters():  # defined values (uninitialized memory may hold NaNs)
                    p.zero_()
            cache = {"state": "cold", "root": scratch, "dtype": dtype, "save": False,
                     "architecture": {"name": spec.name, "arch": spec.arch, "hf_config": spec.hf_config}}
            run = engine.prepare(model, dev, len(prompt_ids), decode_tokens, cache)
            run.alloc_kv()
            run.compile()
            run.capture()
            run.persist()
            prepared[engine_key(cfg, dtype, engine_cfg, len(prompt_ids), str(dev))] = (model, run)
    return prepared, time.time() - t0


def rss_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_memory(device: str) -> None:
    """Give freed memory back: collect cycles, return the device's cache and its pinned host cache, and trim
    glibc's heap to the OS."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        # pinned host buffers (a loader's staging ring) stay in torch's host cache after they are freed; a pool
        # worker's RSS only comes back when they go too (public since torch 2.8; older torch keeps them)
        empty_host_cache = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        if empty_host_cache is not None:
            empty_host_cache()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL(name).malloc_trim(0)
