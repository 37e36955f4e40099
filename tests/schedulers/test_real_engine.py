"""A real instance serving through an engine (``engine=``): its set-up steps timed as cold-start phases, and the
greedy tokens of the eager forward, whatever the prompt length, however sessions interleave on its one KV cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from engines.base import EngineUnsupportedError
from experiments.serverless.real import real_config
from harness.checkpoints import CheckpointStore
from harness.config import option_dict
from schedulers.real.instance import InstanceLoadError, ModelInstance, prompt_tokens

MODEL = option_dict("model", "tiny-llama")
LOADER = {"_target_": "loaders.native.loader.NativeLoader", "dram_dir": None, "threads": 1}
# torch.compile with the eager backend: Dynamo traces (the compile phase) without Inductor's minutes of C++ on CPU
COMPILED = {**option_dict("engine", "compiled"), "backend": "eager", "max_seq": 96}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    store = CheckpointStore(tmp_path_factory.mktemp("engine-ckpt"))
    return str(store.ensure(instantiate(MODEL), "fp32", "native", 0, progress=False).path)


def _stream(inst: ModelInstance, rid: int, prompt: list[int], n: int) -> list[int]:
    return inst.begin(rid, prompt)["tokens"] + inst.step(rid, n)["tokens"]


@pytest.fixture(scope="module")
def eager(ckpt: str) -> ModelInstance:
    inst = ModelInstance()
    inst.load(ckpt, LOADER, MODEL)  # no engine: the model's own forward and transformers' growing cache
    return inst


@pytest.mark.parametrize("engine", [COMPILED, option_dict("engine", "eager")], ids=["compiled", "eager"])
def test_an_engine_times_its_steps_and_serves_the_eager_tokens(ckpt: str, eager: ModelInstance,
                                                               engine: dict[str, Any]) -> None:
    inst = ModelInstance()
    phases = inst.load(ckpt, LOADER, MODEL, engine=engine, prompt_tokens=16)
    compiles = engine is COMPILED
    assert phases["engine"] == ("compiled" if compiles else "eager")
    assert (phases["kv_alloc_s"] > 0, phases["compile_s"] > 0) == (compiles, compiles)
    assert phases["graph_capture_s"] == 0
    if compiles:
        assert phases["kv_cache_tokens"] == 96
    a, b = prompt_tokens(3, 24, 1000), prompt_tokens(4, 9, 1000)  # neither is the 16 tokens it was prepared for
    ref_a, ref_b = _stream(eager, 1, a, 12), _stream(eager, 2, b, 12)
    assert len(set(ref_a)) > 3  # a varied stream, so equality means something
    assert _stream(inst, 1, a, 12) == ref_a
    # two sessions interleaved on one KV cache: each still gets its own stream (the other is re-prefilled)
    got_b = inst.begin(2, b)["tokens"] + inst.step(2, 4)["tokens"]
    inst.begin(5, a)
    got_b += inst.step(2, 8)["tokens"]
    assert got_b == ref_b
    # adopted in rounds (a live migration's destination), then decoded on: the same continuation
    ids = a + ref_a
    inst.finish(1)
    assert inst.adopt(7, ids[:20])["prefilled"] == 19
    assert inst.adopt(7, ids[:30])["prefilled"] == 10
    assert inst.step(7, 5)["tokens"] == ref_a[30 - len(a):35 - len(a)]


def test_an_engine_the_device_lacks_fails_the_load_and_the_run_before_it_starts(
        ckpt: str, compose_cfg: Callable[..., DictConfig]) -> None:
    inst = ModelInstance()
    with pytest.raises(InstanceLoadError, match="engine=compiled"):
        inst.load(ckpt, LOADER, MODEL, engine=option_dict("engine", "graphs"))
    assert inst.model is None
    cfg = compose_cfg("experiment=serverless_real", "engine=graphs", "device=cpu")
    with pytest.raises(EngineUnsupportedError, match="engine=compiled"):
        real_config(cfg)


def test_serverless_real_reads_the_composed_engine(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("experiment=serverless_real", "engine=compiled", "engine.mode=max-autotune-no-cudagraphs",
                      "real.engine_prompt_tokens=24")
    process = real_config(cfg).process
    assert process.engine is not None
    assert process.engine["_target_"] == "engines.compiled.CompiledEngine"
    assert process.engine["mode"] == "max-autotune-no-cudagraphs"
    assert process.engine_prompt_tokens == 24
