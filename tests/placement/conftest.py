"""Shared fixtures for placement tests: the clustered testbed problem and hand-written tiny problems."""

from __future__ import annotations

import numpy as np
import pytest

from placement.base import BlockModel, Network, Problem, ServerType
from placement.catalog import BLOOM_176B
from placement.clustered import ClusteredTopology
from placement.instances import TOY_MODEL_PARAMS


def clustered_problem(max_tokens: int = 128, concurrency: int = 1) -> Problem:
    """BLOOM-176B on the paper's clustered testbed (2 A100 + 7 MIG), l^I = 20."""
    net = ClusteredTopology().build(np.random.default_rng(0))
    return Problem(BLOOM_176B, net, input_tokens=20, max_tokens=max_tokens, design_concurrency=concurrency)


def toy_problem(mem_gb: list[float], tau_s: list[float], rtt_s: list[list[float]], num_blocks: int,
                concurrency: int = 1) -> Problem:
    """Blocks of 1 GB, 0.1 GB cache per session-block, no reserve; ``rtt_s[client][server]``."""
    model = BlockModel("toy", num_blocks=num_blocks, **TOY_MODEL_PARAMS)  # type: ignore[arg-type]
    servers = tuple(ServerType(f"s{j}", mem_gb=m, tau_s=t, tau_in_slope_s=0.0, tau_in_base_s=0.01)
                    for j, (m, t) in enumerate(zip(mem_gb, tau_s, strict=True)))
    client_rtt = np.array(rtt_s, dtype=float)
    net = Network(servers, tuple(f"c{i}" for i in range(len(rtt_s))), client_rtt,
                  np.zeros((len(servers), len(servers))), tuple(range(len(rtt_s))))
    return Problem(model, net, input_tokens=1, max_tokens=1, design_concurrency=concurrency)


@pytest.fixture
def clustered() -> Problem:
    return clustered_problem()
