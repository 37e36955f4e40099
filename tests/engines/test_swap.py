"""A prepared engine takes another model's weights by copying them into its parameters: afterwards it holds exactly
the new model's tensors (checked against that model's manifest), gives a fresh eager start's tokens of those
weights, and its compiled code is reused, not recompiled; another architecture is refused."""

from __future__ import annotations

import pytest
import torch

from engines.compiled import CompiledEngine
from engines.eager import EagerEngine
from engines.swap import WeightSwapError
from harness.checkpoints import CheckpointStore, verify_state_dict
from loaders.safetensors import SafetensorsLoader
from tests.conftest import model_spec
from tests.engines.helpers import CPU, DECODE, built, greedy_reference, prompt


def _weights(store: CheckpointStore, name: str, seed: int) -> dict[str, torch.Tensor]:
    ckpt = store.ensure(model_spec(name), "fp16", "safetensors", seed, progress=False)
    return SafetensorsLoader().load(ckpt.path, CPU).state_dict


@pytest.mark.slow(seconds=40)
def test_a_swapped_compiled_engine_is_the_new_model(shared_store: CheckpointStore) -> None:
    from torch._dynamo.utils import counters

    prepared = built(shared_store, "tiny-opt", seed=0)
    ids = prompt(prepared)
    run = CompiledEngine(max_seq=32).prepare(prepared, CPU, len(ids), DECODE)
    run.alloc_kv()
    run.compile()
    run.first_token(ids)
    graphs = counters["stats"]["unique_graphs"]
    new = _weights(shared_store, "tiny-opt", seed=1)
    copied = run.swap_weights(new)
    ckpt = shared_store.ensure(model_spec("tiny-opt"), "fp16", "safetensors", 1, progress=False)
    assert copied == ckpt.total_bytes
    held = {n: t for n, t in prepared.state_dict().items() if n in ckpt.tensors}
    assert verify_state_dict(ckpt, held) == ckpt.total_bytes  # every tensor is the new model's, by checksum
    run.first_token(ids)
    run.decode(DECODE)
    assert run.tokens == greedy_reference(built(shared_store, "tiny-opt", seed=1))  # a fresh eager start's tokens
    assert counters["stats"]["unique_graphs"] == graphs  # nothing was recompiled: the compiled code took the swap


def test_another_architecture_is_refused(shared_store: CheckpointStore) -> None:
    run = EagerEngine().prepare(built(shared_store, "tiny-opt"), CPU, 8, 0)
    with pytest.raises(WeightSwapError, match="lack"):
        run.swap_weights(_weights(shared_store, "tiny-llama", seed=0))
    weights = _weights(shared_store, "tiny-opt", seed=0)
    name = next(iter(weights))
    with pytest.raises(WeightSwapError, match=name):
        run.swap_weights({**weights, name: weights[name].float()})  # another dtype


def _aligned(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor in an allocation of its own (torch's CPU allocator aligns to 64 bytes), as a native load's are."""
    return {n: t.clone() for n, t in weights.items()}


@pytest.mark.parametrize("engine", [EagerEngine(), CompiledEngine(max_seq=32, backend="aot_eager")],
                         ids=["eager", "compiled"])
def test_aligned_weights_are_bound_not_copied_and_let_go_at_unload(shared_store: CheckpointStore,
                                                                   engine: EagerEngine | CompiledEngine) -> None:
    prepared = built(shared_store, "tiny-opt", seed=0)
    ids = prompt(prepared)
    run = engine.prepare(prepared, CPU, len(ids), DECODE)
    run.alloc_kv()
    run.compile()
    new = _aligned(_weights(shared_store, "tiny-opt", seed=1))
    run.swap_weights(new)
    assert run.facts()["swap_mode"] == "bind"
    params = dict(prepared.named_parameters())
    assert all(params[n].data_ptr() == new[n].data_ptr() for n in params)  # the loaded memory itself, no copy
    run.first_token(ids)
    run.decode(DECODE)
    assert run.tokens == greedy_reference(built(shared_store, "tiny-opt", seed=1))
    run.release_weights()
    assert not any(params[n].data_ptr() == new[n].data_ptr() for n in params)  # the loaded memory is free to go
    unaligned = dict(_aligned(_weights(shared_store, "tiny-opt", seed=0)))
    first = next(iter(params))
    storage = torch.empty(unaligned[first].numel() + 1, dtype=unaligned[first].dtype)
    unaligned[first] = storage[1:].view(unaligned[first].shape)  # one element off the allocator's alignment
    unaligned[first].copy_(_weights(shared_store, "tiny-opt", seed=0)[first])
    run.swap_weights(unaligned)
    assert run.facts()["swap_mode"] == "copy"  # a misaligned tensor: copied into the model's own storage
    run.first_token(ids)
    run.decode(DECODE)
    assert run.tokens == greedy_reference(built(shared_store, "tiny-opt", seed=0))


def test_code_that_holds_the_addresses_always_copies(shared_store: CheckpointStore) -> None:
    prepared = built(shared_store, "tiny-opt", seed=0)
    run = CompiledEngine(max_seq=32, mode="reduce-overhead").prepare(prepared, CPU, 8, DECODE)
    run.alloc_kv()
    run.swap_weights(_aligned(_weights(shared_store, "tiny-opt", seed=1)))
    assert run.facts()["swap_mode"] == "copy"
