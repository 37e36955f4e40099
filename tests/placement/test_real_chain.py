"""The chain's greedy tokens equal one process's, for several placements and routes (in-process servers)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from placement.base import Hop, Placement, Problem, Route, SlotView
from placement.real.blocks import SpanRunner, build_synthetic, config_of, one_process_greedy
from placement.real.client import ChainClient
from placement.real.deployment import deploy
from placement.real.hosting import InProcessHost
from placement.real.server import BlockServer, ServerConfig, ServerMemoryError, SessionTooLongError
from placement.ws_rr import WsRrRouter
from tests.placement.real_helpers import INPUT_TOKENS, MAX_TOKENS, SEED, configs, parts, problem, spec

PROMPT = [11, 5, 42, 7, 300, 2]


class FixedRouter:
    """Always the given route (to force routes that enter a server mid-span)."""

    waits_in_queue = True
    allocation_delay_s = 0.0

    def __init__(self, route: Route) -> None:
        self.fixed = route

    def route(self, problem: Problem, placement: Placement, client: int, view: SlotView) -> Route:
        return self.fixed


CASES = {
    "one server": (Placement((0,), (6,), (12,)), [Hop(0, 0, 6)]),
    "disjoint spans": (Placement((0, 2, 4), (2, 2, 2), (4, 4, 4)), [Hop(0, 0, 2), Hop(1, 2, 4), Hop(2, 4, 6)]),
    "enter mid-span": (Placement((0, 1, 3), (3, 4, 3), (6, 8, 6)), [Hop(0, 0, 2), Hop(1, 2, 4), Hop(2, 4, 6)]),
    "leave early, skip in": (Placement((0, 2), (5, 4), (10, 8)), [Hop(0, 0, 3), Hop(1, 3, 6)]),
}


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_chain_tokens_equal_one_process(arch: str, case: str) -> None:
    s = spec(arch)
    placement, hops = CASES[case]
    reference = one_process_greedy(build_synthetic(s, SEED), PROMPT, MAX_TOKENS)
    prob = problem(s, len(placement.start))
    with deploy(s, configs(s, placement), InProcessHost) as hosts:
        client = ChainClient(parts(s), prob, placement, FixedRouter(Route(tuple(hops))), hosts)
        result = client.generate(0, PROMPT, MAX_TOKENS)
    assert result.tokens == reference
    assert result.path == Route(tuple(hops)).label()
    assert len(result.hops) == MAX_TOKENS * len(hops)  # every hop of every step is recorded


def test_chain_with_ws_rr_route_equals_one_process() -> None:
    s = spec()
    placement = Placement((0, 1, 3), (3, 4, 3), (6, 8, 6))
    reference = one_process_greedy(build_synthetic(s, SEED), PROMPT, MAX_TOKENS)
    with deploy(s, configs(s, placement), InProcessHost) as hosts:
        client = ChainClient(parts(s), problem(s, 3), placement, WsRrRouter(), hosts)
        assert client.generate(0, PROMPT, MAX_TOKENS).tokens == reference


def test_slots_counted_as_the_placement_model() -> None:
    s = spec()
    model = problem(s, 1).model
    tokens = INPUT_TOKENS + MAX_TOKENS
    cfg = ServerConfig("s", 0, 3, cache_slots=4, mem_gb=1.0, session_tokens=tokens, seed=SEED)
    server = BlockServer(s, cfg)
    assert server.open_session("a", 0, 3)  # 3 slots of 4
    assert not server.open_session("b", 1, 3)  # needs 2, 1 free: refused
    assert server.info()["refusals"] == 1
    assert server.open_session("c", 2, 3)  # needs 1
    hidden = torch.zeros(1, tokens, model.d_model)
    server.forward("a", hidden, torch.arange(tokens).unsqueeze(0))
    # the real KV bytes of a full session are exactly k · s_c
    assert server.kv_bytes("a") == pytest.approx(3 * model.cache_gb(tokens) * 1e9)
    with pytest.raises(SessionTooLongError):
        server.forward("a", hidden[:, :1], torch.tensor([[tokens]]))
    server.close_session("a")
    assert server.info()["free_slots"] == 3


def test_memory_budget_bounds_slots() -> None:
    s = spec()
    model = problem(s, 1).model
    tokens = INPUT_TOKENS + MAX_TOKENS
    need_gb = 2 * model.block_gb + 5 * model.cache_gb(tokens)
    ok = ServerConfig("s", 0, 2, cache_slots=5, mem_gb=need_gb, session_tokens=tokens)
    BlockServer(s, ok)
    with pytest.raises(ServerMemoryError, match="exceed mem_gb"):
        BlockServer(s, ServerConfig("s", 0, 2, cache_slots=6, mem_gb=need_gb, session_tokens=tokens))


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-opt"])
def test_span_chain_logits_equal_one_process(arch: str) -> None:
    """Numerically, not only by argmax (synthetic tiny-opt weights give a constant greedy token)."""
    s = spec(arch)
    model = build_synthetic(s, SEED)
    client = parts(s)
    spans = [(SpanRunner(model, 0, 4), 0, 3), (SpanRunner(model, 2, 4), 3, 6)]  # the second enters mid-span
    caches = [runner.new_cache() for runner, _, _ in spans]
    ref_cache = DynamicCache(config=config_of(model))
    ids, pos = torch.tensor([PROMPT]), 0
    for _ in range(4):
        positions = torch.arange(pos, pos + ids.shape[1]).unsqueeze(0)
        with torch.inference_mode():
            want = model(input_ids=ids, position_ids=positions, cache=ref_cache, use_cache=True).logits[:, -1:]
        hidden = client.embed(ids, positions)
        for (runner, first, last), cache in zip(spans, caches, strict=True):
            hidden = runner.forward(cache, hidden, positions, first, last)
        got = client.logits(hidden)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        pos += ids.shape[1]
        ids = torch.tensor([[int(torch.randint(1, 999, (1,), generator=torch.Generator().manual_seed(pos)))]])
