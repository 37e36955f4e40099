"""A real model option: facts from config.json and the file headers, dtype=auto = the checkpoint's own, casts
recorded, and the quirks of real checkpoints (tied weights, no ``model.`` prefix, ``.bin`` pickles, missing or
extra tensors, custom code) handled or refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.checkpoints import CheckpointStore
from harness.modelbuild import build_model
from harness.realmodel import CheckpointTensorsError, RealModel, TrustRemoteCodeError, UnsupportedRealDtypeError
from harness.realweights import UnsafePickleError, WeightsIndexMismatchError
from tests.conftest import RealModels
from tests.real_fixtures import copy_tree

CPU = torch.device("cpu")


def _reference(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


@pytest.mark.parametrize("which", ["opt_bf16_sharded", "opt_fp32_single", "llama_bf16", "opt_bin_sharded"])
def test_facts_come_from_config_and_headers(real_models: RealModels, which: str) -> None:
    path = getattr(real_models, which)
    spec = RealModel(path=str(path))
    ref = _reference(path)
    assert spec.name == path.name
    assert spec.num_params() == sum(p.numel() for p in ref.parameters())
    assert spec.num_layers == ref.config.num_hidden_layers
    assert spec.hidden_size == ref.config.hidden_size
    own = {torch.bfloat16: "bf16", torch.float32: "fp32"}[ref.dtype]
    assert spec.own_dtype == own
    assert spec.resolve_dtype("auto") == own
    assert spec.cast("auto") == ""
    stored = {r.name: r.nbytes for r in spec.records}
    assert spec.checkpoint_bytes() == sum(stored.values())
    if path.joinpath("model.safetensors").exists():  # the header sizes are the file's
        assert stored == {k: v.numel() * v.element_size() for k, v in load_file(path / "model.safetensors").items()}
    assert spec.describe_source()["model_source"] == "local"


def test_other_dtypes_are_casts_and_int8_is_refused(real_models: RealModels) -> None:
    spec = RealModel(path=str(real_models.opt_bf16_sharded))
    assert spec.cast("fp16") == "bf16→fp16"
    assert spec.cast("bf16") == ""
    assert {t.dtype for t in spec.tensor_specs("fp32")} == {torch.float32}
    assert spec.checkpoint_bytes("fp32") == 2 * spec.checkpoint_bytes()
    with pytest.raises(UnsupportedRealDtypeError, match="int8"):
        spec.resolve_dtype("int8")


def test_a_cast_is_done_at_conversion_and_recorded(real_models: RealModels, tmp_path: Path) -> None:
    spec = RealModel(path=str(real_models.opt_bf16_sharded))
    store = CheckpointStore(tmp_path / "store")
    ckpt = store.ensure(spec, "fp16", "native", progress=False)
    assert ckpt.manifest["source"]["cast"] == "bf16→fp16"
    assert ckpt.dtype == "fp16"
    assert ckpt.path.is_relative_to(store.root)
    from loaders.native.loader import NativeLoader

    loaded = NativeLoader().load(ckpt.path, CPU).state_dict
    ref = _reference(real_models.opt_bf16_sharded).state_dict()
    for name, t in loaded.items():
        assert t.dtype == torch.float16, name
        assert torch.equal(t, ref[name].to(torch.float16)), name


def test_tied_weights_and_names_without_the_prefix_build_like_from_pretrained(real_models: RealModels,
                                                                            tmp_path: Path) -> None:
    d = copy_tree(real_models.opt_fp32_single, tmp_path / "noprefix")
    tensors = load_file(d / "model.safetensors")
    assert "lm_head.weight" not in tensors  # tied to the embedding: save_pretrained leaves it out
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, d / "model.safetensors",
              metadata={"format": "pt"})
    spec = RealModel(path=str(d))
    spec.check_tensors()
    model = build_model(spec, "auto", spec.read_state_dict(), CPU)
    ref = _reference(d)
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


def test_missing_and_extra_tensors_are_named(real_models: RealModels, tmp_path: Path) -> None:
    d = copy_tree(real_models.opt_fp32_single, tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    gone = "model.decoder.layers.1.fc1.weight"
    tensors.pop(gone)
    tensors["model.decoder.surplus.weight"] = torch.zeros(3)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointTensorsError, match=r"1 missing \['model.decoder.layers.1.fc1.weight'\], "
                                                     r"1 extra \['model.decoder.surplus.weight'\]"):
        RealModel(path=str(d)).ensure_checkpoint(CheckpointStore(tmp_path / "s"), "auto", "safetensors", False)


def test_an_index_that_disagrees_with_the_shards_is_named(real_models: RealModels, tmp_path: Path) -> None:
    d = copy_tree(real_models.opt_bf16_sharded, tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    others = sorted(set(index["weight_map"].values()) - {index["weight_map"][name]})
    index["weight_map"][name] = others[0]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsIndexMismatchError, match=name):
        _ = RealModel(path=str(d)).records


class Payload:
    """Not a tensor: a .bin holding this needs more than weights_only allows."""


def test_a_bin_pickle_that_needs_more_than_tensors_is_refused(real_models: RealModels, tmp_path: Path) -> None:
    d = copy_tree(real_models.opt_bin_single, tmp_path / "m")
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    state["payload"] = Payload()
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(UnsafePickleError, match=r"weights_only=True.*Payload"):
        _ = RealModel(path=str(d)).records


def _custom(d: Path) -> Path:
    """A directory whose architecture is its own code (config.json auto_map), as remote-code repositories ship."""
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="coldstart_mini", architectures=["MiniForCausalLM"],
               auto_map={"AutoConfig": "configuration_mini.MiniConfig",
                         "AutoModelForCausalLM": "modeling_mini.MiniForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_mini.py").write_text("from transformers import OPTConfig\n\n\nclass MiniConfig(OPTConfig):\n"
                                             "    model_type = 'coldstart_mini'\n")
    (d / "modeling_mini.py").write_text("from transformers import OPTForCausalLM\n\nfrom .configuration_mini import "
                                        "MiniConfig\n\n\nclass MiniForCausalLM(OPTForCausalLM):\n"
                                        "    config_class = MiniConfig\n")
    return d


def test_custom_code_needs_trust_remote_code(real_models: RealModels, tmp_path: Path) -> None:
    d = _custom(copy_tree(real_models.opt_fp32_single, tmp_path / "custom"))
    with pytest.raises(TrustRemoteCodeError, match=r"model\.trust_remote_code is false .* set "
                                                   r"model\.trust_remote_code=true"):
        RealModel(path=str(d))
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results"), "COLDSTART_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "harness", "experiment=loading", "model=local", f"model.path={d}",
                          "loaders=[native]", "progress=false"], capture_output=True, text=True, env=env, timeout=300)
    said = out.stdout + out.stderr  # Hydra's job logging prints to stdout
    assert out.returncode == 2, said[-2000:]
    errors = [line for line in said.splitlines() if "TrustRemoteCodeError" in line]
    assert len(errors) == 1, said[-2000:]
    assert "model.trust_remote_code" in errors[0]
    assert "Traceback" not in said


def test_trusted_custom_code_builds(real_models: RealModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.dynamic_module_utils as dyn

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies the code
    d = _custom(copy_tree(real_models.opt_fp32_single, tmp_path / "custom"))
    spec = RealModel(path=str(d), trust_remote_code=True)
    assert spec.model_class().__name__ == "MiniForCausalLM"
    model = build_model(spec, "auto", spec.read_state_dict(), CPU)
    ref = build_model(RealModel(path=str(real_models.opt_fp32_single)), "auto",
                      RealModel(path=str(real_models.opt_fp32_single)).read_state_dict(), CPU)
    assert type(model).__name__ == "MiniForCausalLM"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))
