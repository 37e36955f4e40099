"""Server types and block models of the papers (ANCHORS §3–4), plus user-defined ones from config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from placement.base import BlockModel, ServerType

# Sun et al. §VI: A100-80GB τ = 3.2197 ms, τ^I = 0.0743·l^I + 32.99 ms, ≈ 86.13 GB; PETALS rps: ANCHORS §3.
A100_80GB = ServerType("a100", mem_gb=86.13, tau_s=3.2197e-3, tau_in_slope_s=0.0743e-3,
                       tau_in_base_s=32.99e-3, inference_rps=369.22, network_rps=3020.37)
# MIG 1g.10gb: τ = 16.2488 ms, τ^I = 0.1041·l^I + 206.35 ms, 9.1 GB, at most 4 blocks.
MIG_1G_10GB = ServerType("mig", mem_gb=9.1, tau_s=16.2488e-3, tau_in_slope_s=0.1041e-3,
                         tau_in_base_s=206.35e-3, max_blocks=4,
                         inference_rps=61.55, network_rps=3138.10)
SERVER_TYPES: dict[str, ServerType] = {t.name: t for t in (A100_80GB, MIG_1G_10GB)}

# BLOOM-176B: block = 12h² + 13h parameters (qkv 3h²+3h, dense h²+h, MLP 8h²+5h, two LayerNorms 4h), h =
# 14336.
BLOOM_176B = BlockModel("bloom-176b", num_blocks=70, block_params=12 * 14336**2 + 13 * 14336, d_model=14336)
# LLaMA-2-70B: block = attention 2h² + 2·h·1024 (GQA, 8 KV heads) + MLP 3·h·28672 + two RMSNorms 2h, h = 8192.
LLAMA_2_70B = BlockModel("llama-2-70b", num_blocks=80,
                         block_params=2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192,
                         d_model=8192, kv_dim=1024)  # 8 of 64 heads carry K/V: cache 1/8 of d_model
BLOCK_MODELS: dict[str, BlockModel] = {m.name: m for m in (BLOOM_176B, LLAMA_2_70B)}


def block_model(name: str) -> BlockModel:
    """A block model by name: the two of the papers (``bloom-176b``, ``llama-2-70b``), else any model-zoo
    option (counted on the meta device, NF4 4.25 bits like PETALS)."""
    if name in BLOCK_MODELS:
        return BLOCK_MODELS[name]
    from harness.config import instantiate_option, options  # the zoo is Hydra config; imported only for this path

    zoo = options("model")
    if name not in zoo:
        raise ValueError(f"model={name!r} is not a placement block model; allowed: {sorted(BLOCK_MODELS)}"
                         + (f" or a model-zoo option {zoo}" if zoo else ""))
    return BlockModel.from_zoo(instantiate_option("model", name))


def server_types(extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, ServerType]:
    """The paper's server types plus user-defined ones (``{name: {mem_gb, tau_s, ...}}``), which may
    override."""
    out = dict(SERVER_TYPES)
    for name, fields in (extra or {}).items():
        out[name] = ServerType(name=name, **dict(fields))
    return out
