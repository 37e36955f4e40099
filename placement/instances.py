"""Random small BPRR instances (synthetic units: 1 GB blocks) for optimality studies, tests and benchmarks."""

from __future__ import annotations

import numpy as np

from placement.base import BlockModel, Network, Problem, ServerType

# 1 GB per block (8-bit, no overhead) and 0.1 GB of cache per session-block at l^I + l_max = 2 tokens.
TOY_MODEL_PARAMS = {"block_params": 10**9, "d_model": 12_500_000, "weight_bits": 8.0,
                    "metadata_overhead": 0.0, "reserve_gib": 0.0}


def random_problem(rng: np.random.Generator, num_servers: int, num_blocks: int, num_clients: int = 1,
                   num_requests: int = 1) -> Problem:
    """Servers with 1.2–(L/2 + 3) GB, τ ∈ [2, 20] ms, RTT ∈ [0, 100] ms; |R| = ``num_requests``."""
    model = BlockModel("toy", num_blocks=num_blocks, **TOY_MODEL_PARAMS)  # type: ignore[arg-type]
    servers = tuple(
        ServerType(f"s{j}", mem_gb=float(rng.uniform(1.2, num_blocks / 2 + 3.0)),
                   tau_s=float(rng.uniform(0.002, 0.02)), tau_in_slope_s=0.0, tau_in_base_s=0.01)
        for j in range(num_servers))
    client_rtt = rng.uniform(0.0, 0.1, size=(num_clients, num_servers))
    server_rtt = rng.uniform(0.0, 0.1, size=(num_servers, num_servers))
    server_rtt = (server_rtt + server_rtt.T) / 2
    np.fill_diagonal(server_rtt, 0.0)
    net = Network(servers, tuple(f"c{i}" for i in range(num_clients)), client_rtt, server_rtt,
                  tuple(range(num_clients)))
    return Problem(model, net, input_tokens=1, max_tokens=1, design_concurrency=num_requests)
