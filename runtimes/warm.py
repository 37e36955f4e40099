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


def arena_size(models: Iterable[dict[str, Any]], dtype: str) -> int:
    """Host-arena bytes for the largest of ``models`` in ``dtype`` (its tensors 4 KiB-aligned, plus slack)."""
    from harness.trial import instantiate
    from loaders.arena import arena_bytes

    sizes = [arena_bytes(t.nbytes for t in instantiate(cfg).tensor_specs(dtype)) for cfg in models]
    return max(sizes, default=0)


def ring_size(loaders: Iterable[dict[str, Any]]) -> int:
    """The largest staging ring the run's loaders ask for (their ``ring_bytes`` knob; 0 if none has one)."""
    return max((int(cfg["ring_bytes"]) for cfg in loaders if cfg.get("ring_bytes")), default=0)


def start_arena(nbytes: int, ring_bytes: int, device: str) -> Any:
    """Install this process's host arena (``loaders.arena``): on CPU ``nbytes`` faulted in now, into which cold
    loads read; on CUDA no host copy of the model, but a staging ring of ``ring_bytes`` pinned now and kept across
    cold starts. Call before the idle RSS is taken, so the arena is part of it. None when there is nothing to keep."""
    from loaders import arena

    cuda = device.startswith("cuda")
    host = 0 if cuda else int(nbytes)
    if host == 0 and not (cuda and ring_bytes):
        return None
    # huge pages: physically contiguous 2 MiB, so an O_DIRECT request fills 4 MiB with a few DMA segments instead of
    # 1 MiB of 4 KiB ones (virtio's 254-segment limit): 2.1–2.2 GB/s against 1.4–1.5 into a 4 KiB arena on the CI VM.
    # Their slow first touch there (0.4 GB/s) is paid here, at the worker's start, off every cold start's path.
    made = arena.HostArena(host, huge=True, pin_ring=cuda)
    if cuda and ring_bytes:
        made.ring(1, int(ring_bytes))  # pinned once, here; a load takes views of it
        made.release_ring()
    arena.install(made)
    return made


def stop_arena(made: Any) -> None:
    """Uninstall and free the process's arena (a recycled worker's last act)."""
    from loaders import arena

    if made is not None:
        if arena.current() is made:
            arena.install(None)
        made.close()


def prepared_keys(models: Iterable[dict[str, Any]], engines: Iterable[dict[str, Any]], dtype: str, device: str,
                  prompt_len: int) -> set[str]:
    """The ``harness.trial.engine_key`` of every engine :func:`prepare_engines` prepares for these arguments."""
    import torch

    from harness.trial import engine_key

    engines = list(engines)
    dev = str(torch.device(device))
    return {engine_key(cfg, dtype, engine_cfg, prompt_len, dev) for cfg in models for engine_cfg in engines}


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
