"""The local Ray session starts on loopback, runs an actor, and is shut down by whoever started it."""

from __future__ import annotations

from typing import Any


def test_local_ray_runs_an_actor(ray_local: Any) -> None:
    ray = ray_local

    @ray.remote
    class Echo:
        def add(self, x: int) -> int:
            return x + 1

    actor = Echo.remote()
    assert ray.get(actor.add.remote(41)) == 42
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    ray.kill(actor)
