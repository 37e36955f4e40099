"""Every engine's tokens equal the eager reference on tiny models; the static KV cache is sized and allocated as
promised; ``graphs`` refuses a CPU run in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.base import Engine, EngineRun, EngineUnsupportedError, KVCacheTooSmallError
from engines.compiled import CompiledEngine
from engines.eager import EagerEngine
from engines.graphs import GraphsEngine
from engines.kvcache import allocate, kv_bytes_per_token, plan_kv
from harness.checkpoints import CheckpointStore
from harness.config import instantiate_option, options
from tests.engines.helpers import CPU, DECODE, built, eager_margins, greedy_reference, prompt


def _tokens(engine: Engine, model: torch.nn.Module, device: torch.device = CPU) -> tuple[list[int], EngineRun]:
    ids = prompt(model)
    run = engine.prepare(model, device, len(ids), DECODE)
    assert isinstance(run, EngineRun)
    run.alloc_kv()
    run.compile()
    run.capture()
    first = run.first_token(ids)
    steps = run.decode(DECODE)
    assert len(steps) == DECODE
    assert all(s > 0 for s in steps)
    assert run.tokens[0] == first
    return list(run.tokens), run


def test_every_engine_option_builds_and_is_an_engine() -> None:
    names = options("engine")
    assert {"eager", "compiled", "graphs"} <= set(names)
    for name in names:
        engine = instantiate_option("engine", name)
        assert isinstance(engine, Engine)
        assert engine.name == name


@pytest.mark.parametrize("model_name", ["tiny-opt", "tiny-llama"])
def test_the_static_cache_path_gives_the_reference_tokens(shared_store: CheckpointStore, model_name: str) -> None:
    """Eager, and the compiled engine's own path (static cache, Dynamo) without code generation, are exact."""
    model = built(shared_store, model_name)
    reference = greedy_reference(model)
    assert _tokens(EagerEngine(), model)[0] == reference
    assert _tokens(CompiledEngine(max_seq=64, backend="aot_eager"), model)[0] == reference


@pytest.mark.slow(seconds=60)
@pytest.mark.parametrize("model_name", ["tiny-opt", "tiny-llama"])
def test_inductor_gives_eagers_first_token_and_eager_argmaxes(shared_store: CheckpointStore, model_name: str) -> None:
    """Inductor's fp16 kernels round differently: the first token must be eager's, and every decoded token an argmax
    of eager's logits up to fp16 rounding (random tiny models have near-ties, e.g. 0.07581 vs 0.07574)."""
    model = built(shared_store, model_name)
    reference = greedy_reference(model)
    compiled, run = _tokens(CompiledEngine(max_seq=64), model)
    assert compiled[0] == reference[0]
    margins = eager_margins(model, compiled)
    assert max(margins) <= 2e-3, margins  # a couple of fp16 ulps at these logit sizes
    facts = run.facts()
    assert facts["kv_cache_tokens"] == 64
    assert facts["kv_cache_bytes"] == 64 * kv_bytes_per_token(model.config, torch.float16)


def test_graphs_refuses_a_cpu_run_naming_the_alternatives() -> None:
    with pytest.raises(EngineUnsupportedError, match=r"needs device=cuda.*engine=eager or engine=compiled"):
        GraphsEngine().check("cpu")
    GraphsEngine().check("cuda:0")  # the check itself needs no device


def test_engine_graphs_on_cpu_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results"), "COLDSTART_CACHE": str(tmp_path / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, "-m", "harness", "experiment=loading", "model=tiny-opt", "device=cpu",
                          "engines=[graphs]", "loaders=[safetensors]", "progress=false"],
                         capture_output=True, text=True, env=env, timeout=300)
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed
    assert "Traceback" not in printed
    (line,) = [ln for ln in printed.splitlines() if "EngineUnsupportedError" in ln]
    assert "engine=eager or engine=compiled" in line
    assert not (tmp_path / "cache").exists()  # refused before any checkpoint was written


def test_bad_engine_knobs_are_named() -> None:
    with pytest.raises(ValueError, match=r"engine\.mode='fast'"):
        CompiledEngine(mode="fast")
    with pytest.raises(ValueError, match="kv_memory_fraction"):
        CompiledEngine(kv_memory_fraction=0)


def test_the_kv_cache_is_capped_by_positions_and_free_memory(shared_store: CheckpointStore) -> None:
    model = built(shared_store, "tiny-opt")
    per_token = kv_bytes_per_token(model.config, torch.float16)
    config = model.config
    assert per_token == 2 * config.num_hidden_layers * config.hidden_size * 2  # K and V, every layer, fp16
    plan = plan_kv(model.config, torch.float16, CPU, 1, 10_000, 0.5, 20)
    assert plan.max_seq == config.max_position_embeddings  # 128: the model's positions cap the cache
    with pytest.raises(KVCacheTooSmallError, match="the prompt and decode need 20"):
        plan_kv(model.config, torch.float16, CPU, 1, 10_000, 1e-12, 20)  # almost no memory: too few tokens fit
    cache = allocate(model, plan, CPU)
    sizes = [layer.keys.nbytes + layer.values.nbytes for layer in cache.layers]
    assert len(sizes) == config.num_hidden_layers
    assert sum(sizes) == plan.nbytes


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", ["tiny-opt", "tiny-llama"])
def test_graphs_tokens_equal_eager_on_cuda(shared_store: CheckpointStore, model_name: str) -> None:
    cuda = torch.device("cuda")
    model = built(shared_store, model_name).to(cuda)
    eager, _ = _tokens(EagerEngine(), model, cuda)
    graphs, run = _tokens(GraphsEngine(max_seq=64), model, cuda)
    assert graphs == eager
    assert run.graph is not None  # type: ignore[attr-defined]
