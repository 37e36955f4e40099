"""A server's checkpoint tiers on its own machine: the file operations behind ``TierOps``.

On one machine (``executor=local``) the agent is an object in the controller's process; on a Ray cluster it is
an actor pinned to the server's node (the same node as every instance of that server), so a server's SSD
directory and its DRAM tier (shared memory) are on the machine whose instances read them. The controller keeps
the bookkeeping (which models each tier holds, LRU order); the agent only moves files.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any


class TierAgent:
    """Copies into the SSD directory, stages into and out of the DRAM tier, removes copies, cleans up."""

    def __init__(self, ssd_dir: str, dram_dir: str, loader: dict[str, Any]) -> None:
        self.ssd_dir, self.dram_dir = Path(ssd_dir), Path(dram_dir)
        self.ssd_dir.mkdir(parents=True, exist_ok=True)
        self.loader_cfg = dict(loader)

    def host(self) -> str:
        return socket.gethostname()

    def copy_to_ssd(self, src: str, dst: str) -> None:
        """Copy a checkpoint directory into the SSD tier, atomically (a temporary name, then a rename)."""
        target = Path(dst)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(target)

    def move(self, src: str, dst: str) -> None:
        """Rename a copy into place (a download becoming the SSD tier's copy); an existing ``dst`` wins."""
        if Path(dst).exists():
            shutil.rmtree(src, ignore_errors=True)
            return
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(src).rename(dst)

    def remove(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def stage(self, ssd_copy: str, capacity_bytes: int) -> None:
        """Put the SSD copy into the DRAM tier (the native loader's shared-memory tier)."""
        self._loader(capacity_bytes).stage_in_dram(Path(ssd_copy))

    def unstage(self, ssd_copy: str, capacity_bytes: int) -> None:
        self._loader(capacity_bytes).unstage_from_dram(Path(ssd_copy))

    def cleanup(self) -> None:
        shutil.rmtree(self.dram_dir, ignore_errors=True)

    def _loader(self, capacity_bytes: int) -> Any:
        from harness.trial import instantiate

        return instantiate({**self.loader_cfg, "dram_dir": str(self.dram_dir),
                            "dram_capacity_bytes": max(int(capacity_bytes), 1)})


class InProcessAgent:
    """The agent as a direct object (one machine): the same ``call`` as a worker handle, without the RPC."""

    def __init__(self, agent: TierAgent) -> None:
        self.agent = agent

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return getattr(self.agent, method)(*args, **kwargs)

    def close(self, timeout_s: float = 10.0) -> None:
        pass
