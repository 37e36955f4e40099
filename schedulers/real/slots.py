"""Live state of the real cluster: slots (a GPU, or on CPU machines a thread + memory budget) grouped in servers,
each server with its DRAM and SSD tiers, and the read-only views the policies get from it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedulers.base import InstanceView, ServerView
from schedulers.state import TierStore


@dataclass
class LiveInstance:
    """A model instance process as the controller tracks it."""

    iid: int
    model: str
    server: int
    gpus: int
    state: str = "pending"  # pending (waiting for slots) → loading → idle | busy → gone
    handle: Any = None
    acquired_s: float | None = None
    idle_since_s: float | None = None
    request: int | None = None
    prompt_tokens: int = 0
    first_token_s: float = 0.0
    done_s: float = 0.0
    decode_s_per_token: float = 0.0
    version: int = 0
    migrating: bool = False
    preempted: bool = False
    migrate_to: LiveInstance | None = None  # set when a migration destination is loaded
    for_request: int | None = None  # the request this cold start was placed for
    tier: str = "ssd"
    cache_to: tuple[str, ...] = ("dram", "ssd")
    prewarm_keep_s: float | None = None  # a pre-warmed instance: its first keep-alive window
    phases: dict[str, float] = field(default_factory=dict)

    def view(self) -> InstanceView:
        busy = self.state == "busy"
        return InstanceView(self.iid, self.model, self.server, self.gpus, busy, self.request if busy else None,
                            self.prompt_tokens, self.first_token_s, self.done_s, self.decode_s_per_token,
                            self.idle_since_s if self.state == "idle" else None, self.migrating)


class LiveServer:
    """One server: ``num_gpus`` slots, a loading queue (one load at a time), and its checkpoint tiers on disk."""

    def __init__(self, sid: int, num_gpus: int, root: Path, dram_dir: Path, dram_bytes: int, ssd_bytes: int,
                 gbps: dict[str, float], node: str | None = None) -> None:
        self.sid, self.num_gpus, self.free_gpus = sid, num_gpus, num_gpus
        self.ssd_dir, self.dram_dir = root / "ssd", dram_dir
        self.node = node  # a Ray node's resource ("node:IP") its instances and tier agent are pinned to
        self.agent: Any = None  # the TierAgent doing this server's file operations (on its node)
        self.dram = TierStore(f"server{sid}.dram", dram_bytes)
        self.ssd = TierStore(f"server{sid}.ssd", ssd_bytes)
        self.gbps = dict(gbps)
        self.instances: dict[int, LiveInstance] = {}
        self.queue_free_at_s = 0.0
        self.load_lock = threading.Lock()  # the sequential loading queue, for real

    def view(self) -> ServerView:
        idle = sum(i.gpus for i in self.instances.values() if i.state == "idle")
        return ServerView(self.sid, self.num_gpus, self.free_gpus, idle, self.queue_free_at_s,
                          self.dram.names(), self.ssd.names(), self.gbps["dram"], self.gbps["ssd"],
                          self.gbps["remote"], tuple(i.view() for i in self.instances.values()))

    def ssd_path(self, model: str) -> Path:
        return self.ssd_dir / model.replace("#", "_")

    def placement(self) -> dict[str, float] | None:
        """The Ray resources that pin a worker to this server's node (None: wherever the executor runs it)."""
        return {self.node: 0.001} if self.node else None
