"""A deployment: one block server per placed server, started in parallel, and a wall-clock workload over it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.zoo import ModelSpec
from placement.base import Placement, Problem
from placement.real.client import ChainClient, SessionResult
from placement.real.hosting import Host
from placement.real.server import ServerConfig

HostFactory = Callable[[ModelSpec, ServerConfig], Host]


@dataclass(frozen=True)
class RealServerType:
    """How a server type is emulated on this machine: memory budget, torch threads and compute slowdown."""

    name: str
    mem_gb: float
    threads: int = 1
    slowdown: float = 1.0
    max_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.mem_gb <= 0:
            raise ValueError(f"{self.name}.mem_gb={self.mem_gb} is invalid; allowed: > 0")
        if self.threads < 1 or self.slowdown < 1:
            raise ValueError(f"{self.name}: threads={self.threads}, slowdown={self.slowdown} invalid; allowed: "
                             "threads >= 1, slowdown >= 1")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise ValueError(f"{self.name}.max_blocks={self.max_blocks} is invalid; allowed: null or >= 1")


def real_types(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, RealServerType]:
    """``{name: {mem_gb, threads, slowdown, max_blocks}}`` from config → RealServerType by name."""
    return {str(k): RealServerType(name=str(k), **dict(v)) for k, v in spec.items()}


def server_configs(problem: Problem, placement: Placement, types: Mapping[str, RealServerType], seed: int,
                   dtype: str = "fp32") -> dict[int, ServerConfig]:
    """One ServerConfig per server that holds blocks, with the placement's span and cache slots."""
    out = {}
    for j, (a, m) in enumerate(zip(placement.start, placement.count, strict=True)):
        if m == 0:
            continue
        t = types[problem.network.servers[j].name]
        out[j] = ServerConfig(name=f"s{j}-{t.name}", start=a, count=m, cache_slots=placement.cache_slots[j],
                              mem_gb=t.mem_gb, session_tokens=problem.input_tokens + problem.max_tokens,
                              threads=t.threads, slowdown=t.slowdown, seed=seed, dtype=dtype)
    return out


@contextmanager
def deploy(spec: ModelSpec, configs: Mapping[int, ServerConfig], host: HostFactory) -> Iterator[dict[int, Host]]:
    """Start every server (in parallel), yield the handles, and stop them all afterwards, whatever happened."""
    hosts: dict[int, Host] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(configs))) as pool:
            futures = {j: pool.submit(host, spec, config) for j, config in configs.items()}
            errors = []
            for j, fut in futures.items():
                try:
                    hosts[j] = fut.result()
                except Exception as exc:  # the others are still stopped below
                    errors.append(exc)
            if errors:
                raise errors[0]
        yield hosts
    finally:
        for h in hosts.values():
            h.close()


def request_row(res: SessionResult, client_name: str, arrival_s: float, max_tokens: int) -> dict[str, Any]:
    """The simulator's request columns for one measured session (``placement.simulator.REQUEST_COLUMNS``)."""
    completion = arrival_s + res.wait_s + res.service_s
    decode = [h for h in res.hops if h["step"] > 0 and not h["replay"]]
    steps = max(max_tokens - 1, 1)
    return {"request_id": res.request_id, "client": client_name, "arrival_s": arrival_s, "path": res.path,
            "hops": len(res.path.split(">")), "attempts": res.attempts, "wait_s": res.wait_s,
            "allocation_delay_s": 0.0, "ttft_s": res.ttft_s, "per_token_s": (completion - arrival_s) / max_tokens,
            "decode_token_s": sum(h["hop_s"] for h in decode) / steps, "service_s": res.service_s,
            "completion_s": completion, "reroutes": res.reroutes}


def run_workload(clients: Mapping[int, ChainClient], arrivals: list[tuple[float, int]], prompts: list[list[int]],
                 max_tokens: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[list[int]]]:
    """Replay ``arrivals`` in wall-clock time, one thread per request; request rows, hop rows, tokens."""
    results: dict[int, tuple[SessionResult, float]] = {}
    errors: list[BaseException] = []
    t0 = time.perf_counter()

    def one(rid: int, at_s: float, c: int) -> None:
        delay = t0 + at_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            res = clients[c].generate(rid, prompts[rid], max_tokens, arrival=t0 + at_s)
            results[rid] = (res, at_s)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(rid, t, c), daemon=True) for rid, (t, c) in enumerate(arrivals)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    rows, hops, tokens = [], [], []
    for rid in sorted(results):
        res, at_s = results[rid]
        c = arrivals[rid][1]
        rows.append(request_row(res, clients[c].problem.network.clients[c], at_s, max_tokens))
        hops.extend(res.hops)
        tokens.append(res.tokens)
    return rows, hops, tokens


def seeded_prompts(rng: np.random.Generator, count: int, tokens: int, vocab: int) -> list[list[int]]:
    """``count`` prompts of ``tokens`` ids in 1..vocab-1 (no tokenizer needed)."""
    return [[int(x) for x in rng.integers(1, vocab, size=tokens)] for _ in range(count)]
