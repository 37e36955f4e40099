"""One cold-start trial in a fresh interpreter: ``python -m harness.trial SPEC.json OUT.json SPAWN_TS``.

Phase timestamps are wall-clock (``time.time``) so the parent's spawn time and the child's marks share a clock:
spawn → imports → device init → weights loaded (materialized) → model built → first token.
"""

from __future__ import annotations

import time

_T_PYTHON = time.time()  # first line of Python: interpreter start-up is in the imports phase

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


def run_trial(spec: dict[str, Any], spawn_ts: float) -> dict[str, Any]:
    marks = {"spawn": spawn_ts, "python": _T_PYTHON}
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

    token = mb.first_token(model, device, int(spec.get("prompt_tokens", 16)))
    marks["first_token"] = time.time()

    out: dict[str, Any] = {"marks": marks, "first_token_id": token, "loader_phases_s": result.phases_s,
                           "bytes_by_tier": result.bytes_by_tier,
                           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if spec.get("verify", True):  # outside every timed phase
        t0 = time.time()
        manifest_dir = Path(spec.get("manifest_dir") or spec["checkpoint"])
        out["verified_bytes"] = verify_state_dict(open_checkpoint(manifest_dir), result.state_dict)
        out["verify_s"] = time.time() - t0
    return out


def main() -> None:
    spec_path, out_path, spawn_ts = sys.argv[1], sys.argv[2], float(sys.argv[3])
    spec = json.loads(Path(spec_path).read_text())
    out = run_trial(spec, spawn_ts)
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
