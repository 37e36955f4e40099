"""Compile caches as a cache state: ``cold`` compiles into an empty per-start Inductor/AOTAutograd cache; ``warm``
restores the portable artifacts (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``) an earlier
cold start saved under ``COLDSTART_CACHE``, beside the checkpoints.

An artifact lives in a folder named by what was compiled (architecture, dtype, engine options, shapes) and carries
its full key (those, the torch version and the device) and a checksum. One whose key differs (another torch, another
device, another architecture copied in) or whose bytes do not match is never loaded: the start compiles cold,
replaces it, and reports why (``status``: ``rebuilt: <reason>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("coldstart.engines")

STATES = ("cold", "warm")
ARTIFACT = "artifacts.bin"
META = "meta.json"
ENV = "TORCHINDUCTOR_CACHE_DIR"  # Inductor's FX-graph cache and AOTAutograd's cache live under it


def device_name(device: torch.device) -> str:
    """What compiled code is specific to: the GPU's name, or the CPU's model name and ISA flags' digest."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model, flags = "", ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = hashlib.sha1(line.split(":", 1)[1].strip().encode()).hexdigest()[:8]
    return f"cpu:{model} flags {flags}"


def compile_key(architecture: dict[str, Any], dtype: str, engine: str, options: dict[str, Any],
                shapes: dict[str, int], device: torch.device) -> dict[str, Any]:
    """Everything an artifact's code depends on (its identity: :func:`folder_name` and the check on load)."""
    return {"architecture": architecture, "dtype": dtype, "engine": engine, "options": options, "shapes": shapes,
            "torch": torch.__version__, "device": device_name(device)}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_name(key: dict[str, Any]) -> str:
    """The artifact's folder: the model, dtype and engine to read, and a digest of what was compiled (not of the
    torch version or device, so an artifact another torch or machine left there is found, and refused)."""
    what = {k: key[k] for k in ("architecture", "dtype", "engine", "options", "shapes")}
    name = str(key["architecture"].get("name", "model"))
    return f"{name}-{key['dtype']}-{key['engine']}-{_digest(what)}"


class CompileCache:
    """One start's compile cache: an empty Inductor cache directory for the start (both states), the stored artifact
    it restores (``warm``) and the artifact it saves afterwards."""

    def __init__(self, root: str | Path, state: str, key: dict[str, Any], save_artifacts: bool = True) -> None:
        if state not in STATES:
            raise ValueError(f"compile_cache={state!r}; choose one of {STATES}")
        self.state, self.key, self.save_artifacts = state, key, bool(save_artifacts)
        self.folder = Path(root) / folder_name(key)
        self.status = state
        self.restored_bytes = 0
        self._scratch: str | None = None
        self._previous_env: str | None = None

    def begin(self) -> None:
        """Point Inductor at an empty directory (nothing from an earlier start on this machine is reused), then, when
        warm, restore the stored artifact; a refused one is rebuilt (:attr:`status` says why)."""
        self._previous_env = os.environ.get(ENV)
        self._scratch = tempfile.mkdtemp(prefix="coldstart-inductor-")
        os.environ[ENV] = self._scratch
        if self.state == "warm":
            reason = self._restore()
            self.status = "hit" if reason is None else f"rebuilt: {reason}"
            if reason is not None:
                log.warning("compile cache %s: %s; compiling cold and replacing it", self.folder, reason)

    def _restore(self) -> str | None:
        """Load the artifact; None when it was loaded, else why it was refused."""
        meta_path, blob_path = self.folder / META, self.folder / ARTIFACT
        if not meta_path.is_file() or not blob_path.is_file():
            return "no artifact saved yet"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable {META} ({exc})"
        stored = meta.get("key") if isinstance(meta, dict) else None
        if not isinstance(stored, dict):
            return f"{META} has no key"
        differs = sorted(k for k in set(stored) | set(self.key) if stored.get(k) != self.key.get(k))
        if differs:
            field = differs[0]
            return (f"foreign artifact ({field}: saved for {stored.get(field)!r}, this start is "
                    f"{self.key.get(field)!r})")
        blob = blob_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            return f"corrupt artifact ({ARTIFACT} does not match its checksum)"
        try:
            info = torch.compiler.load_cache_artifacts(blob)
        except Exception as exc:  # rebuilt, never used
            return f"corrupt artifact (torch could not load it: {type(exc).__name__})"
        if info is None:  # torch logs what it could not unpickle and returns None
            return "corrupt artifact (torch could not load it)"
        self.restored_bytes = len(blob)
        return None

    def save(self) -> int:
        """Store what this start compiled (after its first token, outside every timed phase), atomically; the bytes
        saved (0 when it was a hit: the stored artifact stays)."""
        if self.status == "hit":
            return 0
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return 0
        blob = saved[0]
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
        try:
            (tmp / ARTIFACT).write_bytes(blob)
            (tmp / META).write_text(json.dumps({"key": self.key, "sha256": hashlib.sha256(blob).hexdigest(),
                                                "bytes": len(blob)}, indent=1, sort_keys=True, default=str))
            old = self.folder.with_name(self.folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(tmp, self.folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return len(blob)

    def end(self) -> None:
        """Remove the start's Inductor directory and restore the environment."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._previous_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._previous_env
