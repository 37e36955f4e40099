"""What the results were measured on: software versions, CPU, memory, disk, GPU."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil
import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _disk_of(path: Path) -> dict[str, Any]:
    path = path.resolve()
    best = None
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and (best is None or len(part.mountpoint) > len(best.mountpoint)):
            best = part
    usage = psutil.disk_usage(str(path if path.exists() else path.parent))
    return {"path": str(path), "device": best.device if best else None, "mountpoint": best.mountpoint if best else None,
            "fstype": best.fstype if best else None, "total_bytes": usage.total, "free_bytes": usage.free}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def collect(storage_dir: Path | None = None) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "memory_bytes": psutil.virtual_memory().total, "git_commit": _git_commit(),
        "cuda_available": torch.cuda.is_available(),
    }
    if storage_dir is not None:
        env["disk"] = _disk_of(storage_dir)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_bytes": props.total_memory, "count": torch.cuda.device_count(),
                      "cuda": torch.version.cuda}
    return env
