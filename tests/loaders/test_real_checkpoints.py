"""Every loader on real checkpoints (save_pretrained directories, .bin-only, a Hugging Face cache snapshot): the
tensors it delivers pass the manifest, the model built from them equals ``from_pretrained``'s tensor for tensor
(tied weights included), and the first token, in words, is the same whichever loader read the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.modelbuild import build_model, first_token, materialize
from harness.realmodel import RealModel
from harness.trial import instantiate
from tests.conftest import RealModels
from tests.real_fixtures import PROMPT

CPU = torch.device("cpu")
LOADERS = {"torch": "loaders.torch.TorchLoader", "torch_mmap": "loaders.torch_mmap.TorchMmapLoader",
           "safetensors": "loaders.safetensors.SafetensorsLoader", "hf": "loaders.hf.HfLoader",
           "native": "loaders.native.loader.NativeLoader", "runai": "loaders.runai.RunaiLoader",
           "fastsafetensors": "loaders.fastsafetensors.FastsafetensorsLoader",
           "tensorizer": "loaders.tensorizer.TensorizerLoader"}
SOURCES = ["opt_bf16_sharded", "opt_bin_sharded", "opt_bin_single", "llama_bf16", "hub"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> CheckpointStore:
    return CheckpointStore(tmp_path_factory.mktemp("real-store"), safetensors_shard_bytes=100_000,
                           torch_shard_bytes=100_000)


def _spec(real_models: RealModels, which: str) -> RealModel:
    if which == "hub":
        return RealModel(hf_id="org/tiny-opt", cache_dir=str(real_models.hub))
    return RealModel(path=str(getattr(real_models, which)))


_REFERENCES: dict[Path, Any] = {}


def _reference(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    if path not in _REFERENCES:
        _REFERENCES[path] = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    return _REFERENCES[path]


@pytest.mark.parametrize("which", SOURCES)
@pytest.mark.parametrize("loader_name", list(LOADERS))
def test_every_loader_builds_what_from_pretrained_builds(real_models: RealModels, store: CheckpointStore,
                                                          which: str, loader_name: str) -> None:
    spec = _spec(real_models, which)
    loader = instantiate({"_target_": LOADERS[loader_name]})
    try:
        loader.check_available()
    except Exception as exc:  # a missing peer package is reported, never skipped
        pytest.fail(f"{loader_name} is unavailable: {exc}")
    ckpt = store.ensure(spec, "auto", loader.formats[0], progress=False)
    in_place = loader.formats[0] == spec.source.format
    assert (ckpt.path == spec.source.path) == in_place  # the user's own format is read where it is
    result = loader.load(ckpt.path, CPU)
    materialize(result.state_dict, CPU)
    assert verify_state_dict(ckpt, result.state_dict) == spec.checkpoint_bytes()
    model = build_model(spec, "auto", result.state_dict, CPU)
    ref = _reference(spec.source.path)
    mine, theirs = model.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys()
    for name in theirs:
        assert mine[name].dtype == theirs[name].dtype, name
        assert torch.equal(mine[name], theirs[name]), name
    if ref.config.tie_word_embeddings:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids, text = spec.prompt(PROMPT, 8)
    token = first_token(model, CPU, ids=ids)
    assert token == first_token(ref, CPU, ids=ids)
    if spec.source.has_tokenizer:
        assert text == PROMPT
        assert ids == spec.tokenizer()(PROMPT)["input_ids"]
        assert spec.decode(token) == spec.tokenizer().decode([token]) != ""
    else:
        assert text == ""
        assert spec.decode(token) == ""


def test_first_token_text_is_the_same_across_loaders(real_models: RealModels, store: CheckpointStore) -> None:
    spec = _spec(real_models, "opt_bf16_sharded")
    ids, _ = spec.prompt(PROMPT, 8)
    texts = {}
    for name, target in LOADERS.items():
        loader = instantiate({"_target_": target})
        ckpt = store.ensure(spec, "auto", loader.formats[0], progress=False)
        model = build_model(spec, "auto", loader.load(ckpt.path, CPU).state_dict, CPU)
        texts[name] = spec.decode(first_token(model, CPU, ids=ids))
    assert len(set(texts.values())) == 1, texts
    assert next(iter(texts.values())), texts
