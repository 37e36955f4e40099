"""Model zoo: parameter counts against the published ones, stored tensors, dtypes, derived sizes."""

from __future__ import annotations

import pytest
import torch

from harness.config import option, options
from harness.zoo import DTYPES, INT8_SCALE_SUFFIX, check_dtype, dequantize
from tests.conftest import model_spec

ZOO = [m for m in options("model") if option("model", m)._target_ == "harness.zoo.ModelSpec"]  # not model=local
PUBLISHED = [m for m in ZOO if not m.startswith("tiny-")]


def test_zoo_has_the_required_models() -> None:
    required = {"opt-125m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b", "opt-30b", "opt-66b", "llama-2-7b",
                "llama-2-13b", "llama-2-70b", "falcon-7b", "falcon-40b", "bloom-176b", "llama-3.1-8b", "qwen3-32b"}
    assert required <= set(PUBLISHED)
    assert {"tiny-opt", "tiny-llama"} <= set(options("model"))


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_matches_published(name: str) -> None:
    spec = model_spec(name)
    assert spec.reference_params, f"{name} needs a published reference_params"
    counted = spec.num_params()  # meta device: nothing allocated
    assert abs(counted - spec.reference_params) / spec.reference_params < 0.01, (counted, spec.reference_params)


def test_llama2_7b_exact_count() -> None:
    assert model_spec("llama-2-7b").num_params() == 6_738_415_616


def test_tensor_specs_drop_tied_aliases_and_match_params() -> None:
    spec = model_spec("opt-125m")
    names = [t.name for t in spec.tensor_specs("fp16")]
    assert len(names) == len(set(names))
    assert "lm_head.weight" not in names  # tied to the token embedding
    assert sum(t.numel for t in spec.tensor_specs("fp16")) == spec.num_params()
    untied = model_spec("tiny-llama")
    assert "lm_head.weight" in [t.name for t in untied.tensor_specs("fp16")]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_checkpoint_bytes_per_dtype(dtype: str) -> None:
    spec = model_spec("tiny-opt")
    params = spec.num_params()
    size = spec.checkpoint_bytes(dtype)
    per_param = {"fp32": 4, "fp16": 2, "bf16": 2}.get(dtype)
    if per_param:
        assert size == params * per_param
    else:  # int8: 1 byte per weight-matrix element + fp16 scales and fp16 vectors
        assert params < size < 2 * params
        specs = spec.tensor_specs("int8")
        assert any(t.dtype == torch.int8 for t in specs)
        assert all(t.name[: -len(INT8_SCALE_SUFFIX)] in {s.name for s in specs}
                   for t in specs if t.name.endswith(INT8_SCALE_SUFFIX))


def test_dequantize_int8() -> None:
    q = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
    scale = torch.tensor([0.5, 2.0], dtype=torch.float16)
    out = dequantize({"w.weight": q, "w.weight" + INT8_SCALE_SUFFIX: scale, "b": torch.ones(2)})
    assert set(out) == {"w.weight", "b"}
    assert torch.equal(out["w.weight"], torch.tensor([[0.5, -1.0], [6.0, 8.0]], dtype=torch.float16))


def test_derived_sizes_follow_the_architecture() -> None:
    llama = model_spec("llama-2-7b")
    assert llama.num_layers == 32
    assert llama.hidden_size == 4096
    # 2 (K,V) × 32 layers × 32 kv heads × 128 head dim × 2 bytes
    assert llama.kv_bytes_per_token("fp16") == 2 * 32 * 32 * 128 * 2
    # one LLaMA layer: 4 h² attention + 3 h·ffn MLP + 2 norms
    assert llama.layer_bytes("fp16") == (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) * 2
    assert model_spec("llama-2-70b").kv_bytes_per_token("fp16") == 2 * 80 * 8 * 128 * 2


def test_bad_dtype_names_allowed_values() -> None:
    with pytest.raises(ValueError, match="fp16"):
        check_dtype("float8")
