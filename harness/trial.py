"""One cold-start trial: ``python -m harness.trial SPEC.json OUT.json SPAWN_TS`` in a fresh interpreter (the
``fresh`` runtime), or :func:`run_trial` called in a forked child or a pool worker (``runtimes/``).

Phase timestamps are wall-clock (``time.time``) so the parent's spawn time and the child's marks share a clock:
spawn → handoff (a runtime holds the spec: a fresh interpreter's first line of Python, a forked child's first
line, a pool worker's call) → imports → device init → weights loaded (materialized) → model built → the engine's
set-up (``kv_alloc``, ``compile``, ``graph_capture``: ``engines.base``; each mark equals the one before where an
engine has no such step) → first token. Consecutive marks are the phases, so the phases sum to the cold start.
After the first token, outside the cold start: the decode (``tpot_s``), the compile cache saved, the verification.
"""

from __future__ import annotations

import time

_T_PYTHON = time.time()  # first line of Python: the fresh runtime's hand-off (interpreter start-up before it)

import importlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ENGINE_MARKS = ("kv_alloc", "compile", "graph_capture")  # an engine's set-up steps, in the order they run


def instantiate(cfg: dict[str, Any]) -> Any:
    """A minimal ``_target_`` instantiation (flat configs), so a trial does not pay for importing Hydra."""
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    module, _, name = cfg["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def engine_key(model_cfg: dict[str, Any], dtype: str, engine_cfg: dict[str, Any] | None, prompt_len: int,
               device: str) -> str:
    """What a prepared engine is specific to: the architecture (not the model's name: its weights are swapped in),
    the dtype, the engine's options, the prompt's length and the device."""
    arch = {k: v for k, v in model_cfg.items() if k not in ("name", "reference_params", "reference_source")}
    return json.dumps([arch, dtype, engine_cfg, prompt_len, device], sort_keys=True, default=str)


def prepared_key(spec: dict[str, Any]) -> str | None:
    """The :func:`engine_key` of the prepared engine a trial of ``spec`` would use; None where none can serve it (no
    engine named, or int8: quantized weights are not swapped into a prepared model)."""
    if not spec.get("engine") or spec["dtype"] == "int8":
        return None
    import torch

    prompt_len = len(spec.get("prompt_ids") or []) or int(spec.get("prompt_tokens", 16))
    return engine_key(spec["model"], spec["dtype"], spec["engine"], prompt_len, str(torch.device(spec["device"])))


def run_trial(spec: dict[str, Any], spawn_ts: float, handoff_ts: float | None = None,
              prepared: dict[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """Load, build and prefill as ``spec`` says; the marks, first token, loader phases and (outside every timed
    phase) the verified bytes. ``handoff_ts``: when the runtime took the spec (default: this module's import).

    ``prepared``: engines a pool worker prepared at its start, by :func:`engine_key` → (model, engine run). When one
    fits, the loaded weights are copied into its parameters (the ``model_build`` phase) and its set-up steps take no
    time; the model's tensors are then checked equal to the loaded ones, which are checked against the manifest."""
    handoff = _T_PYTHON if handoff_ts is None else handoff_ts
    marks = {"spawn": spawn_ts, "handoff": handoff, "python": handoff}
    import torch

    import harness.modelbuild as mb
    from harness.checkpoints import open_checkpoint, verify_state_dict

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    loader = instantiate(spec["loader"])
    spec_model = instantiate(spec["model"])
    mb.import_model_class(spec_model)  # transformers imports lazily: pay for the modeling module here, not later
    engine = instantiate(spec["engine"]) if spec.get("engine") else None
    marks["imports"] = time.time()

    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.cuda.init()
        torch.empty(1, device=device)
        torch.cuda.synchronize(device)
    marks["device_init"] = time.time()

    ref = spec["checkpoint"]  # a directory, or a URL (the remote state) that Path would mangle
    result = loader.load(ref if "://" in ref else Path(ref), device)
    mb.materialize(result.state_dict, device)
    marks["weights"] = time.time()

    prompt = list(spec.get("prompt_ids") or mb.fixed_prompt(int(spec_model.config().vocab_size),
                                                            int(spec.get("prompt_tokens", 16))))
    decode_tokens = int(spec.get("decode_tokens") or 0)
    key = prepared_key(spec)
    held = prepared.get(key) if prepared is not None and key is not None else None
    swapped: dict[str, Any] | None = None
    if held is not None:  # a prepared engine: the new weights swapped into it, nothing else to set up
        model, run = held
        swapped = spec_model.model_names(result.state_dict, model)
        run.swap_weights(swapped)
        marks["model_build"] = time.time()
        for step in ENGINE_MARKS:
            marks[step] = marks["model_build"]
    else:
        model = mb.build_model(spec_model, spec["dtype"], result.state_dict, device)
        marks["model_build"] = time.time()
        run = None
        if engine is None:  # a caller that names no engine: the eager prefill, no engine steps
            for step in ENGINE_MARKS:
                marks[step] = marks["model_build"]
        else:
            run = engine.prepare(model, device, len(prompt), decode_tokens, spec.get("compile_cache"))
            previous = "model_build"
            for step, do in zip(ENGINE_MARKS, (run.alloc_kv, run.compile, run.capture), strict=True):
                marks[step] = time.time() if do() else marks[previous]  # a step the engine lacks: 0 s
                previous = step
    token = run.first_token(prompt) if run is not None else mb.first_token(model, device, len(prompt), prompt)
    marks["first_token"] = time.time()

    out: dict[str, Any] = {"marks": marks, "first_token_id": token, "loader_phases_s": result.phases_s,
                           "loader_info": dict(getattr(result, "info", {}) or {}),
                           "bytes_by_tier": result.bytes_by_tier,
                           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if run is not None and engine is not None:  # after the cold start: the steady state the engine buys, its caches
        steps = run.decode(decode_tokens) if decode_tokens else []
        out["decode_s"] = steps
        out["decode_tokens"] = len(steps)
        run.persist()
        out["engine"] = {"name": engine.name, **run.facts(), "engine_prepared": held is not None}
        if held is not None:  # nothing was compiled in this start: the engine was prepared at the worker's start
            out["engine"]["compile_cache_status"] = "prepared"
    out["loader_settle_s"] = result.settle()  # work the load left running (a copy written behind), waited out here
    if spec.get("verify", True):  # outside every timed phase
        t0 = time.time()
        manifest_dir = Path(spec.get("manifest_dir") or spec["checkpoint"])  # a remote load: the store's copy
        ckpt = open_checkpoint(manifest_dir, spec.get("manifest"))  # a real model's files: their manifest is kept apart
        out["verified_bytes"] = verify_state_dict(ckpt, result.state_dict)
        if swapped is not None:  # the prepared model now holds exactly the loaded (verified) tensors
            out["swap_verified_bytes"] = _same_tensors(model, swapped)
        out["verify_s"] = time.time() - t0
    if held is not None and run is not None:  # unload: the prepared model lets go of the loaded memory it bound
        run.release_weights()
    return out


def _same_tensors(model: Any, weights: dict[str, Any]) -> int:
    """Bytes of ``model``'s parameters, each equal to the tensor of its name in ``weights`` (raises otherwise)."""
    import torch

    from harness.checkpoints import ChecksumMismatchError

    total = 0
    for name, p in model.named_parameters():
        src = weights.get(name)
        if src is None or not torch.equal(p.detach(), src.to(p.device)):
            raise ChecksumMismatchError(f"after the weight swap, parameter {name!r} is not the loaded tensor")
        total += p.numel() * p.element_size()
    return total


def run_files(spec_path: str, out_path: str, spawn_ts: float, handoff_ts: float | None = None) -> None:
    """Read the spec from ``spec_path``, run the trial, write its result to ``out_path`` (JSON)."""
    spec = json.loads(Path(spec_path).read_text())
    out = run_trial(spec, spawn_ts, handoff_ts)
    Path(out_path).write_text(json.dumps(out))


def main() -> None:
    run_files(sys.argv[1], sys.argv[2], float(sys.argv[3]))


if __name__ == "__main__":
    main()
