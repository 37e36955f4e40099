"""One cold-start trial: ``python -m harness.trial SPEC.json OUT.json SPAWN_TS`` in a fresh interpreter (the
``fresh`` runtime), or :func:`run_trial` called in a forked child or a pool worker (``runtimes/``).

Phase timestamps are wall-clock (``time.time``) so the parent's spawn time and the child's marks share a clock:
spawn → handoff (a runtime holds the spec: a fresh interpreter's first line of Python, a forked child's first
line, a pool worker's call) → imports → device init → weights loaded (materialized) → model built → first token.
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


def instantiate(cfg: dict[str, Any]) -> Any:
    """A minimal ``_target_`` instantiation (flat configs), so a trial does not pay for importing Hydra."""
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    module, _, name = cfg["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def run_trial(spec: dict[str, Any], spawn_ts: float, handoff_ts: float | None = None) -> dict[str, Any]:
    """Load, build and prefill as ``spec`` says; the marks, first token, loader phases and (outside every timed
    phase) the verified bytes. ``handoff_ts``: when the runtime took the spec (default: this module's import)."""
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

    model = mb.build_model(spec_model, spec["dtype"], result.state_dict, device)
    marks["model_build"] = time.time()

    token = mb.first_token(model, device, int(spec.get("prompt_tokens", 16)), spec.get("prompt_ids"))
    marks["first_token"] = time.time()

    out: dict[str, Any] = {"marks": marks, "first_token_id": token, "loader_phases_s": result.phases_s,
                           "loader_info": dict(getattr(result, "info", {}) or {}),
                           "bytes_by_tier": result.bytes_by_tier,
                           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if spec.get("verify", True):  # outside every timed phase
        t0 = time.time()
        manifest_dir = Path(spec.get("manifest_dir") or spec["checkpoint"])  # a remote load: the store's copy
        ckpt = open_checkpoint(manifest_dir, spec.get("manifest"))  # a real model's files: their manifest is kept apart
        out["verified_bytes"] = verify_state_dict(ckpt, result.state_dict)
        out["verify_s"] = time.time() - t0
    return out


def run_files(spec_path: str, out_path: str, spawn_ts: float, handoff_ts: float | None = None) -> None:
    """Read the spec from ``spec_path``, run the trial, write its result to ``out_path`` (JSON)."""
    spec = json.loads(Path(spec_path).read_text())
    out = run_trial(spec, spawn_ts, handoff_ts)
    Path(out_path).write_text(json.dumps(out))


def main() -> None:
    run_files(sys.argv[1], sys.argv[2], float(sys.argv[3]))


if __name__ == "__main__":
    main()
