"""Shared pieces of the real-chain tests: a tiny deeper model, a problem over it, and a chain client."""

from __future__ import annotations

import numpy as np

from harness.zoo import ModelSpec
from placement.base import Network, Overheads, Placement, Problem, ServerType
from placement.real.blocks import ClientParts, build_synthetic, chain_spec
from placement.real.server import ServerConfig, real_block_model
from tests.conftest import model_spec

SEED = 3
INPUT_TOKENS, MAX_TOKENS = 6, 8


def spec(name: str = "tiny-llama", layers: int = 6) -> ModelSpec:
    return chain_spec(model_spec(name), layers)


def problem(s: ModelSpec, num_servers: int, rtt_s: float = 0.0) -> Problem:
    t = ServerType("cpu", mem_gb=1.0, tau_s=1e-3, tau_in_slope_s=0.0, tau_in_base_s=1e-3, inference_rps=1000.0)
    net = Network((t,) * num_servers, ("c0",), np.full((1, num_servers), rtt_s), np.zeros((num_servers,) * 2))
    return Problem(real_block_model(s), net, INPUT_TOKENS, MAX_TOKENS, 1,
                   Overheads(per_token_s=0.0, input_base_s=0.0, input_per_token_s=0.0, initial_s=0.0))


def configs(s: ModelSpec, placement: Placement) -> dict[int, ServerConfig]:
    return {j: ServerConfig(f"s{j}", a, m, placement.cache_slots[j], mem_gb=1.0,
                            session_tokens=INPUT_TOKENS + MAX_TOKENS, seed=SEED)
            for j, (a, m) in enumerate(zip(placement.start, placement.count, strict=True)) if m}


def parts(s: ModelSpec) -> ClientParts:
    return ClientParts(build_synthetic(s, SEED))
