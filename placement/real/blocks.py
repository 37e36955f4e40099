"""The pieces of a zoo model that a chain splits: embeddings and head (client), decoder-layer spans (servers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.modelbuild import build_model
from harness.realmodel import RealModel
from harness.synthetic import synthetic_tensor
from harness.zoo import ModelSpec

SUPPORTED = ("llama", "opt")  # decoder-layer call conventions this module knows


class UnsupportedArchitectureError(ValueError):
    """The chain splits only architectures whose layer call convention it knows (``SUPPORTED``)."""


def chain_spec(spec: ModelSpec, num_layers: int | None = None) -> ModelSpec:
    """The zoo spec with ``num_hidden_layers`` replaced (a deeper tiny model gives more blocks to place)."""
    if num_layers is None:
        return spec
    if num_layers < 1:
        raise ValueError(f"pipeline.num_layers={num_layers} is invalid; allowed: null or >= 1")
    return spec.variant(f"{spec.name}-{num_layers}l", num_hidden_layers=num_layers)


def build_synthetic(spec: ModelSpec, seed: int, dtype: str = "fp32",
                    device: torch.device | str = "cpu") -> torch.nn.Module:
    """The whole model with seeded synthetic weights (each tensor depends only on (seed, name)), sdpa attention.

    Every server and the client build the same weights from the same seed, so no checkpoint travels.
    """
    return _build_full(spec, dtype, device, lambda: {t.name: synthetic_tensor(t, seed)
                                                     for t in spec.tensor_specs(dtype)})


def build_full(spec: ModelSpec, seed: int, dtype: str = "fp32", device: torch.device | str = "cpu"
               ) -> torch.nn.Module:
    """The whole model: a real model's own weights (read from its files, cast to ``dtype``; every server reads the
    same files), else :func:`build_synthetic`'s seeded ones."""
    if isinstance(spec, RealModel):
        return _build_full(spec, dtype, device, lambda: spec.read_state_dict(dtype))
    return build_synthetic(spec, seed, dtype, device)


def _build_full(spec: ModelSpec, dtype: str, device: torch.device | str,
                weights: Callable[[], dict[str, torch.Tensor]]) -> torch.nn.Module:
    model_type = spec.config().model_type
    if model_type not in SUPPORTED:
        raise UnsupportedArchitectureError(f"model {spec.name!r} ({model_type}) cannot be split into a chain; "
                                           f"allowed architectures: {list(SUPPORTED)}")
    model = build_model(spec, dtype, weights(), torch.device(device))
    config_of(model)._attn_implementation = "sdpa"  # mask None → causal prefill, full attention for one new token
    return model.eval()


def config_of(model: torch.nn.Module) -> Any:
    """The transformers config of a built model."""
    return model.config


def decoder(model: torch.nn.Module) -> Any:
    """The module that owns the decoder layers (``model.model`` or ``model.model.decoder``)."""
    inner: Any = model.model
    return inner.decoder if config_of(model).model_type == "opt" else inner


def layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(decoder(model).layers)


@dataclass
class ClientParts:
    """What the client keeps: token and position embeddings, final norm and LM head."""

    model: torch.nn.Module

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states entering block 0 for token ``ids`` at ``positions`` (both [1, n])."""
        dec = decoder(self.model)
        h = dec.embed_tokens(ids)
        if config_of(self.model).model_type == "opt":
            if dec.project_in is not None:
                h = dec.project_in(h)
            h = h + dec.embed_positions(None, 0, position_ids=positions)
        return h

    @torch.inference_mode()
    def next_token(self, hidden: torch.Tensor) -> int:
        """Greedy token from the hidden state leaving the last block (last position)."""
        return int(self.logits(hidden)[0, -1].argmax().item())

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits [1, 1, vocab] of the last position of the hidden state leaving the last block."""
        dec = decoder(self.model)
        h = hidden[:, -1:]
        if config_of(self.model).model_type == "opt":
            if dec.final_layer_norm is not None:
                h = dec.final_layer_norm(h)
            if dec.project_out is not None:
                h = dec.project_out(h)
        else:
            h = dec.norm(h)
        out: torch.Tensor = self.model.lm_head(h)  # type: ignore[operator]
        return out


class SpanRunner:
    """Runs decoder layers ``first .. last-1`` of the model on hidden states, with a per-session KV cache."""

    def __init__(self, model: torch.nn.Module, start: int, count: int) -> None:
        all_layers = layers(model)
        if not (start >= 0 and count >= 1 and start + count <= len(all_layers)):
            raise ValueError(f"span start={start}, count={count} is invalid; allowed: inside 0..{len(all_layers)}")
        self.config = config_of(model)
        self.start, self.count = start, count
        self.layers = {start + i: all_layers[start + i] for i in range(count)}
        self.rotary = getattr(decoder(model), "rotary_emb", None)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def forward(self, cache: Any, hidden: torch.Tensor, positions: torch.Tensor, first: int, last: int
                ) -> torch.Tensor:
        """Layers ``first .. last-1`` (inside this span) on ``hidden`` [1, n, d] at ``positions`` [1, n]."""
        if not (self.start <= first < last <= self.start + self.count):
            raise ValueError(f"blocks [{first}, {last}) are not inside this span "
                             f"[{self.start}, {self.start + self.count})")
        kwargs: dict[str, Any] = {"position_ids": positions, "cache": cache, "use_cache": True}
        if self.rotary is not None:
            kwargs["position_embeddings"] = self.rotary(hidden, positions)
        for b in range(first, last):
            hidden = self.layers[b](hidden, attention_mask=None, **kwargs)
        return hidden


@torch.inference_mode()
def one_process_greedy(model: torch.nn.Module, prompt: list[int], max_tokens: int) -> list[int]:
    """The reference: the same model in one process, incremental greedy decoding with its own KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config_of(model))
    ids = torch.tensor([prompt])
    out: list[int] = []
    pos = 0
    for _ in range(max_tokens):
        positions = torch.arange(pos, pos + ids.shape[1]).unsqueeze(0)
        logits = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True).logits
        token = int(logits[0, -1].argmax().item())
        out.append(token)
        pos += ids.shape[1]
        ids = torch.tensor([[token]])
    return out
