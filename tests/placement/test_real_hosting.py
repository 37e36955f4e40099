"""Servers as local processes and Ray actors: same tokens, refusal + back-off, a server killed mid-session."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import pytest

from harness.executors.local import LocalExecutor
from harness.executors.ray import RayExecutor
from placement.base import Placement
from placement.petals_dijkstra import PetalsDijkstraRouter
from placement.real.blocks import build_synthetic, one_process_greedy
from placement.real.client import ChainClient
from placement.real.deployment import deploy
from placement.real.hosting import InProcessHost, ServerDiedError, WorkerHost
from placement.ws_rr import WsRrRouter
from tests.placement.real_helpers import MAX_TOKENS, SEED, configs, parts, problem, spec

PROMPT = [9, 8, 7, 6, 5, 4]
# Server 0 hosts 0..3, 1 hosts 3..5, 2 hosts 2..5 (a replacement for 1 entering mid-span), 3 hosts 5..6.
PLACEMENT = Placement((0, 3, 2, 5), (3, 2, 3, 1), (6, 4, 6, 2))


@pytest.fixture(scope="module")
def reference() -> list[int]:
    return one_process_greedy(build_synthetic(spec(), SEED), PROMPT, MAX_TOKENS)


def _killer(hosts: dict[int, Any], client: ChainClient, at_step: int, position: int = 1) -> tuple[list[int], Any]:
    """A hook that kills the route's ``position``-th server (by index) after token ``at_step`` (mid-session)."""
    killed: list[int] = []

    def hook(step: int) -> None:
        if step == at_step and not killed:
            servers = client.running_servers()[0]  # the running session's servers
            victim = sorted(servers)[position]
            hosts[victim].kill()
            killed.append(victim)

    return killed, hook


@pytest.mark.slow
def test_local_processes_same_tokens_and_survive_a_kill(reference: list[int]) -> None:
    s = spec()
    with deploy(s, configs(s, PLACEMENT), partial(WorkerHost, executor=LocalExecutor())) as hosts:
        client = ChainClient(parts(s), problem(s, 4), PLACEMENT, WsRrRouter(), hosts)
        first = client.generate(0, PROMPT, MAX_TOKENS)
        assert first.tokens == reference
        killed, hook = _killer(hosts, client, at_step=3)
        second = client.generate(1, PROMPT, MAX_TOKENS, after_token=hook)
        assert killed  # a server of the route really died mid-session
        with pytest.raises(ServerDiedError):
            hosts[killed[0]].call("ping")
        assert second.tokens == reference  # re-routed, replayed the cached inputs, same tokens
        assert second.reroutes == 1
        replays = [h for h in second.hops if h["replay"]]
        assert replays
        assert all(h["server"] != killed[0] for h in replays)
        assert replays[0]["tokens"] == len(PROMPT) + 4  # prompt + the tokens decoded before the kill
        assert killed[0] in client.dead


def test_refused_session_backs_off_and_retries() -> None:
    s = spec()
    one = Placement((0,), (6,), (6,))  # room for exactly one session on all 6 blocks
    sleeps: list[float] = []
    with deploy(s, configs(s, one), InProcessHost) as hosts:
        hosts[0].call("open_session", "blocker", 0, 6, 0.0)
        router = PetalsDijkstraRouter()
        release = threading.Timer(0.5, lambda: hosts[0].call("close_session", "blocker"))

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 1:
                release.start()
                release.join()

        client = ChainClient(parts(s), problem(s, 1), one, router, hosts, sleep=sleep)
        result = client.generate(0, PROMPT, 2)
        assert result.attempts == 2  # refused once, then served
        assert sleeps[0] == router.retry_after_s(1) == 1.0  # PETALS back-off min(2^(n-1), 60) s
        assert hosts[0].call("info")["refusals"] == 1


@pytest.mark.slow
def test_ray_actors_same_tokens_and_survive_a_kill(ray_local: object, reference: list[int]) -> None:
    s = spec()
    executor = RayExecutor()  # joins the session's local Ray (ray_local), leaves it running
    host = partial(WorkerHost, executor=executor, num_cpus=0.25)
    twins = Placement((0, 0), (6, 6), (6, 6))  # two actors (each start costs an interpreter): one replaces the other
    with executor, deploy(s, configs(s, twins), host) as hosts:
        client = ChainClient(parts(s), problem(s, 2), twins, WsRrRouter(), hosts)
        assert client.generate(0, PROMPT, MAX_TOKENS).tokens == reference
        killed, hook = _killer(hosts, client, at_step=2, position=0)
        result = client.generate(1, PROMPT, MAX_TOKENS, after_token=hook)
        assert killed
        assert result.tokens == reference
        assert result.reroutes == 1
