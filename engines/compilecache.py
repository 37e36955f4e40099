"""Compile caches as a cache state: ``cold`` compiles into an empty per-start Inductor/AOTAutograd cache; ``warm``
restores what an earlier cold start saved under ``COLDSTART_CACHE``, beside the checkpoints: Inductor's portable
artifacts (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``), the kernels Inductor built (its cache
directory: on CPU the portable artifacts carry the generated C++ source only, and every start would compile it again),
and the engine's precompiled whole-graph forwards (Dynamo's ``aot_compile``: a warm start then traces nothing).

An artifact lives in a folder named by what was compiled (architecture, dtype, engine options, shapes) and carries
its full key (those, the torch version and the device) and a checksum per file. One whose key differs (another torch,
another device, another architecture copied in) or whose bytes do not match is never loaded: the start compiles cold,
replaces it, and reports why (``status``: ``rebuilt: <reason>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("coldstart.engines")

STATES = ("cold", "warm")
ARTIFACT = "artifacts.bin"  # Inductor's portable artifacts
KERNELS = "kernels.tar"  # the start's Inductor cache directory: the kernels it built
PRECOMPILED = "precompiled"  # <name>.bin: whole-graph forwards, one per served shape
META = "meta.json"
ENV = "TORCHINDUCTOR_CACHE_DIR"  # Inductor's FX-graph cache, AOTAutograd's cache and the built kernels live under it


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_name(key: dict[str, Any]) -> str:
    """The artifact's folder: the model, dtype and engine to read, and a digest of what was compiled (not of the
    torch version or device, so an artifact another torch or machine left there is found, and refused)."""
    what = {k: key[k] for k in ("architecture", "dtype", "engine", "options", "shapes")}
    name = str(key["architecture"].get("name", "model"))
    return f"{name}-{key['dtype']}-{key['engine']}-{_digest(what)}"


class ArtifactRefused(Exception):
    """Why a stored artifact is not used (the start compiles cold and replaces it)."""


class CompileCache:
    """One start's compile cache: an empty Inductor cache directory for the start (both states), the stored artifact
    it restores (``warm``) and the artifact it saves afterwards.

    ``functions``: the precompiled forwards a warm start restored, by name (empty when cold or refused); the engine
    runs them instead of tracing."""

    def __init__(self, root: str | Path, state: str, key: dict[str, Any], save_artifacts: bool = True) -> None:
        if state not in STATES:
            raise ValueError(f"compile_cache={state!r}; choose one of {STATES}")
        self.state, self.key, self.save_artifacts = state, key, bool(save_artifacts)
        self.folder = Path(root) / folder_name(key)
        self.status = state
        self.restored_bytes = 0
        self.functions: dict[str, Callable[..., Any]] = {}
        self._scratch: str | None = None
        self._previous_env: str | None = None

    def begin(self, f_globals: dict[str, Any] | None = None, functions: list[str] | None = None) -> None:
        """Point Inductor at an empty directory (nothing from an earlier start on this machine is reused), then, when
        warm, restore the stored artifact; a refused one is rebuilt (:attr:`status` says why). ``functions``: the
        precompiled forwards the start needs (a stored artifact without one of them is refused); ``f_globals``: the
        module globals of the function they were traced from."""
        self._previous_env = os.environ.get(ENV)
        self._scratch = tempfile.mkdtemp(prefix="coldstart-inductor-")
        os.environ[ENV] = self._scratch
        if self.state != "warm":
            return
        try:
            self._restore(f_globals, functions or [])
            self.status = "hit"
        except ArtifactRefused as exc:
            self.status = f"rebuilt: {exc}"
            self.functions, self.restored_bytes = {}, 0
            shutil.rmtree(self._scratch, ignore_errors=True)  # nothing half-restored reaches the cold compile
            os.makedirs(self._scratch)
            log.warning("compile cache %s: %s; compiling cold and replacing it", self.folder, exc)

    def _files(self) -> dict[str, str]:
        """The stored files by name → checksum, once the key and every checksum are right."""
        meta_path = self.folder / META
        if not meta_path.is_file():
            raise ArtifactRefused("no artifact saved yet")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactRefused(f"unreadable {META} ({exc})") from None
        stored = meta.get("key") if isinstance(meta, dict) else None
        if not isinstance(stored, dict):
            raise ArtifactRefused(f"{META} has no key")
        differs = sorted(k for k in set(stored) | set(self.key) if stored.get(k) != self.key.get(k))
        if differs:
            field = differs[0]
            raise ArtifactRefused(f"foreign artifact ({field}: saved for {stored.get(field)!r}, this start is "
                                  f"{self.key.get(field)!r})")
        files = meta.get("files")
        if not isinstance(files, dict) or ARTIFACT not in files:
            raise ArtifactRefused(f"{META} lists no files (saved by an older coldstart)")
        for name, checksum in sorted(files.items()):
            path = self.folder / name
            if not path.is_file():
                raise ArtifactRefused(f"corrupt artifact ({name} is missing)")
            if _sha256(path) != checksum:
                raise ArtifactRefused(f"corrupt artifact ({name} does not match its checksum)")
        return files

    def _restore(self, f_globals: dict[str, Any] | None, functions: list[str]) -> None:
        files = self._files()
        for name in functions:
            if f"{PRECOMPILED}/{name}.bin" not in files:
                raise ArtifactRefused(f"corrupt artifact ({PRECOMPILED}/{name}.bin is missing)")
        if KERNELS in files:
            try:
                with tarfile.open(self.folder / KERNELS) as tar:
                    tar.extractall(str(self._scratch), filter="data")
            except (OSError, tarfile.TarError) as exc:
                raise ArtifactRefused(f"corrupt artifact ({KERNELS}: {type(exc).__name__})") from None
        blob = (self.folder / ARTIFACT).read_bytes()
        try:
            info = torch.compiler.load_cache_artifacts(blob) if blob else True
        except Exception as exc:  # rebuilt, never used
            raise ArtifactRefused(f"corrupt artifact (torch could not load it: {type(exc).__name__})") from None
        if info is None:  # torch logs what it could not unpickle and returns None
            raise ArtifactRefused("corrupt artifact (torch could not load it)")
        prefix = f"{PRECOMPILED}/"
        for name in sorted(n for n in files if n.startswith(prefix)):
            try:
                with open(self.folder / name, "rb") as f:
                    fn = torch.compiler.load_compiled_function(f, f_globals=f_globals)
            except Exception as exc:  # another Python, a changed function: rebuilt, never used
                raise ArtifactRefused(f"corrupt artifact (torch could not load {name}: {type(exc).__name__})") \
                    from None
            self.functions[name[len(prefix):].removesuffix(".bin")] = fn
        self.restored_bytes = sum((self.folder / n).stat().st_size for n in files)

    def save(self, functions: dict[str, Any] | None = None) -> int:
        """Store what this start compiled (after its first token, outside every timed phase), atomically: the
        portable artifacts, the kernels built (the start's Inductor directory) and ``functions`` (precompiled
        forwards, ``AOTCompiledFunction``s by name). The bytes saved (0 when it was a hit: the stored one stays)."""
        if self.status == "hit":
            return 0
        saved = torch.compiler.save_cache_artifacts()
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
        try:
            (tmp / ARTIFACT).write_bytes(saved[0] if saved is not None else b"")
            if self._scratch is not None:
                with tarfile.open(tmp / KERNELS, "w") as tar:
                    tar.add(self._scratch, arcname=".")
            if functions:
                (tmp / PRECOMPILED).mkdir()
                for name, fn in functions.items():
                    fn.save_compiled_function(str(tmp / PRECOMPILED / f"{name}.bin"))
            files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            size = sum((tmp / n).stat().st_size for n in files)
            (tmp / META).write_text(json.dumps({"key": self.key, "files": files, "bytes": size}, indent=1,
                                               sort_keys=True, default=str))
            old = self.folder.with_name(self.folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(tmp, self.folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return size

    def end(self) -> None:
        """Remove the start's Inductor directory and restore the environment."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._previous_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._previous_env
