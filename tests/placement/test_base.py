"""The block model's sizes (paper numbers from first principles) and validation of plain data."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import instantiate_option
from placement.base import BlockModel, Network, ServerType
from placement.catalog import BLOOM_176B, LLAMA_2_70B, block_model, server_types


def test_bloom_block_size_is_the_papers_s_m() -> None:
    # Sun et al. §VI: s_m ≈ 1.3234 GB (NF4, 4.25 bits, PETALS' 1% metadata overhead).
    assert BLOOM_176B.block_gb == pytest.approx(1.3234, abs=5e-5)
    assert BLOOM_176B.num_blocks == 70


def test_bloom_cache_per_session_block_is_8_49_mb() -> None:
    # s_c = 2 · 14336 · (20 + 128) · 2 bytes = 8.49 MB.
    assert BLOOM_176B.cache_gb(20 + 128) * 1e3 == pytest.approx(8.49, abs=5e-3)


def test_block_size_scales_with_bits() -> None:
    fp16 = BlockModel("x", 70, BLOOM_176B.block_params, 14336, weight_bits=16, metadata_overhead=0)
    assert fp16.block_gb == pytest.approx(BLOOM_176B.block_params * 2 / 1e9)


@pytest.mark.slow
def test_catalog_block_params_match_the_model_zoo() -> None:

    for name, model in (("bloom-176b", BLOOM_176B), ("llama-2-70b", LLAMA_2_70B)):
        spec = instantiate_option("model", name)
        zoo = BlockModel.from_zoo(spec)
        assert (zoo.block_params, zoo.num_blocks, zoo.d_model, zoo.kv_dim) == (
            model.block_params, model.num_blocks, model.d_model, model.kv_dim)


def test_unknown_model_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="bloom-176b"):
        block_model("gpt-5")


@pytest.mark.parametrize(("field", "value"), [("mem_gb", -1.0), ("tau_s", 0.0), ("tau_in_base_s", -0.1)])
def test_negative_server_numbers_are_rejected(field: str, value: float) -> None:
    kwargs = {"name": "bad", "mem_gb": 10.0, "tau_s": 0.01, "tau_in_slope_s": 0.0, "tau_in_base_s": 0.01}
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        ServerType(**kwargs)  # type: ignore[arg-type]


def test_user_defined_server_type_from_config() -> None:
    h100 = {"mem_gb": 80.0, "tau_s": 0.002, "tau_in_slope_s": 0.0, "tau_in_base_s": 0.02}
    types = server_types({"h100": h100})
    assert types["h100"].mem_gb == 80.0
    assert {"a100", "mig"} <= set(types)


def test_negative_rtt_is_rejected() -> None:
    s = server_types()["a100"]
    with pytest.raises(ValueError, match="rtt"):
        Network((s,), ("c",), np.array([[-0.01]]), np.zeros((1, 1)))


def test_grouped_query_attention_shrinks_the_cache() -> None:
    # LLaMA-2-70B: 8 of 64 heads carry K/V, so a session's cache per block is 1/8 of the d_model formula.
    assert LLAMA_2_70B.cache_gb(148) == pytest.approx(2 * 1024 * 148 * 2 / 1e9)
    assert LLAMA_2_70B.cache_gb(148) == pytest.approx(BlockModel("x", 80, 1, 8192).cache_gb(148) / 8)
    with pytest.raises(ValueError, match="kv_dim"):
        BlockModel("x", 80, 1, 8192, kv_dim=9000)


def test_any_model_zoo_option_is_a_block_model() -> None:
    tiny = block_model("tiny-llama")
    assert (tiny.num_blocks, tiny.d_model, tiny.kv_dim) == (2, 64, 32)  # 2 of 4 heads carry K/V
    assert tiny.block_gb > 0
    with pytest.raises(ValueError, match="tiny-llama"):
        block_model("gpt-5")
