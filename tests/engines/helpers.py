"""Shared by the engine tests: a tiny zoo model built from its checkpoint, and the eager reference tokens."""

from __future__ import annotations

import torch

import harness.modelbuild as mb
from harness.checkpoints import CheckpointStore
from harness.zoo import fixed_prompt
from loaders.safetensors import SafetensorsLoader
from tests.conftest import model_spec

CPU = torch.device("cpu")
PROMPT_TOKENS = 8
DECODE = 6


def built(store: CheckpointStore, name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` built from its safetensors checkpoint (seed ``seed``) as a cold start builds it."""
    spec = model_spec(name)
    ckpt = store.ensure(spec, "fp16", "safetensors", seed, progress=False)
    loaded = SafetensorsLoader().load(ckpt.path, CPU)
    return mb.build_model(spec, "fp16", loaded.state_dict, CPU)


def prompt(model: torch.nn.Module) -> list[int]:
    return fixed_prompt(int(model.config.vocab_size), PROMPT_TOKENS)


def greedy_reference(model: torch.nn.Module, tokens: int = DECODE) -> list[int]:
    """The first token (today's ``first_token``) and ``tokens`` more, each from the full sequence re-run eagerly
    without any cache: the reference no engine's cache or compiled code takes part in."""
    ids = prompt(model)
    out = [mb.first_token(model, CPU, len(ids), ids)]
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(input_ids=torch.tensor([ids + out]), use_cache=False).logits
            out.append(int(logits[0, -1].argmax().item()))
    return out


def eager_margins(model: torch.nn.Module, tokens: list[int]) -> list[float]:
    """For each token of a greedy continuation of the prompt: how far its eager logit (the full sequence so far,
    no cache) lies below that step's best logit (0: it is eager's argmax)."""
    ids = prompt(model)
    out = []
    with torch.inference_mode():
        for k, token in enumerate(tokens):
            logits = model(input_ids=torch.tensor([ids + tokens[:k]]), use_cache=False).logits[0, -1].float()
            out.append(float(logits.max() - logits[token]))
    return out
