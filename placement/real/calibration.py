"""Calibration: τ and τ^I per block per server type measured on real servers, and the relay's fixed costs.

The simulator's model (Sun et al. §III) is per hop t_c + k·τ (decode) and t^I_c + k·τ^I (prefill), t_c = RTT +
a fixed per-hop overhead. Each type's server runs k = 1 and k = K blocks; τ is the slope, the intercept joins
the measured relay cost (pickling, IPC) in the per-hop overhead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.zoo import ModelSpec
from placement.base import GB, Overheads, ServerType
from placement.real.blocks import ClientParts
from placement.real.deployment import HostFactory, RealServerType, deploy
from placement.real.hosting import Host
from placement.real.server import ServerConfig, real_block_model


@dataclass(frozen=True)
class Calibration:
    """Measured server types (for the simulator and the policies), overheads, and the raw per-type rows."""

    types: dict[str, ServerType]
    overheads: Overheads
    rows: list[dict[str, Any]]


def _median_times(host: Host, d_model: int, first: int, last: int, tokens: int, decode_steps: int, reps: int
                  ) -> tuple[float, float, float, float]:
    """(prefill busy, prefill overhead, decode busy, decode overhead) medians in s; overhead = wall − busy."""
    pre_b, pre_o, dec_b, dec_o = [], [], [], []
    gen = torch.Generator().manual_seed(0)
    for r in range(reps):
        sid = f"calib-{first}-{last}-{tokens}-{r}"
        if not host.call("open_session", sid, first, last, 0.0):
            raise RuntimeError(f"calibration server refused session {sid}: its slots are still held")
        hidden = torch.randn(1, tokens, d_model, generator=gen) * 0.02
        t0 = time.perf_counter()
        _, busy = host.call("forward", sid, hidden, torch.arange(tokens).unsqueeze(0))
        wall = time.perf_counter() - t0
        pre_b.append(busy)
        pre_o.append(wall - busy)
        for step in range(decode_steps):
            one = torch.randn(1, 1, d_model, generator=gen) * 0.02
            t0 = time.perf_counter()
            _, busy = host.call("forward", sid, one, torch.tensor([[tokens + step]]))
            wall = time.perf_counter() - t0
            dec_b.append(busy)
            dec_o.append(wall - busy)
        host.call("close_session", sid)
    return (float(np.median(pre_b)), float(np.median(pre_o)), float(np.median(dec_b)), float(np.median(dec_o)))


def parallelism(host: Host, d_model: int, blocks: int, tokens: int, decode_steps: int, reps: int) -> float:
    """How many hops the server computes at once, measured: two sessions' decode hops one after the other vs
    from two threads at once, wall ratio (1: one hop at a time; 2: fully parallel). Median of ``reps``."""
    gen = torch.Generator().manual_seed(1)

    def session(sid: str) -> None:
        if not host.call("open_session", sid, 0, blocks, 0.0):
            raise RuntimeError(f"calibration server refused session {sid}: its slots are still held")
        host.call("forward", sid, torch.randn(1, tokens, d_model, generator=gen) * 0.02,
                  torch.arange(tokens).unsqueeze(0))
        for step in range(decode_steps):
            host.call("forward", sid, torch.randn(1, 1, d_model, generator=gen) * 0.02, torch.tensor([[tokens + step]]))
        host.call("close_session", sid)

    ratios = []
    for r in range(reps):
        t0 = time.perf_counter()
        session(f"par-{r}-a")
        session(f"par-{r}-b")
        one_by_one = time.perf_counter() - t0
        with ThreadPoolExecutor(2) as pool:
            t0 = time.perf_counter()
            list(pool.map(session, (f"par-{r}-c", f"par-{r}-d")))
            together = time.perf_counter() - t0
        ratios.append(one_by_one / together)
    return float(np.median(ratios))


def client_step_s(parts: ClientParts, reps: int = 30) -> float:
    """Median client work per generated token: embed one token and apply the head."""
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        h = parts.embed(torch.tensor([[1 + i]]), torch.tensor([[i]]))
        parts.next_token(h)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def calibrate(spec: ModelSpec, real: Mapping[str, RealServerType], host: HostFactory, parts: ClientParts,
              input_tokens: int, max_tokens: int, blocks: int, reps: int, seed: int, dtype: str = "fp32"
              ) -> Calibration:
    """One server per type hosting K blocks (K = min(blocks, L, max_blocks)); measure, fit, return the types."""
    model = real_block_model(spec, dtype)
    session_tokens = 2 * input_tokens + max_tokens
    configs, ks = {}, {}
    for i, t in enumerate(real.values()):
        k = max(1, min(blocks, model.num_blocks, t.max_blocks or model.num_blocks))
        ks[t.name] = k
        need_gb = k * model.block_gb + 2 * k * model.cache_gb(session_tokens)  # room for two calibration sessions
        configs[i] = ServerConfig(f"calib-{t.name}", 0, k, cache_slots=2 * k, mem_gb=need_gb,
                                  session_tokens=session_tokens, threads=t.threads, slowdown=t.slowdown, seed=seed,
                                  dtype=dtype)
    rows: list[dict[str, Any]] = []
    steps = max(1, min(max_tokens - 1, 8))
    with deploy(spec, configs, host) as hosts:
        for i, t in enumerate(real.values()):
            k = ks[t.name]
            h = hosts[i]
            _median_times(h, model.d_model, 0, k, input_tokens, steps, 1)  # warm-up (first-call allocations)
            m1 = _median_times(h, model.d_model, 0, 1, input_tokens, steps, reps)
            mk = _median_times(h, model.d_model, 0, k, input_tokens, steps, reps) if k > 1 else m1
            m1b = _median_times(h, model.d_model, 0, 1, 2 * input_tokens, 1, reps)
            mkb = _median_times(h, model.d_model, 0, k, 2 * input_tokens, 1, reps) if k > 1 else m1b
            span = max(k - 1, 1)
            tau = (mk[2] - m1[2]) / span if k > 1 else m1[2]
            tau_in = (mk[0] - m1[0]) / span if k > 1 else m1[0]
            tau_in_2 = (mkb[0] - m1b[0]) / span if k > 1 else m1b[0]
            slope = max((tau_in_2 - tau_in) / input_tokens, 0.0)
            par = parallelism(h, model.d_model, k, input_tokens, steps, reps)
            rows.append({"server_type": t.name, "blocks_measured": k, "threads": t.threads, "slowdown": t.slowdown,
                         "mem_gb": t.mem_gb, "tau_s": max(tau, 1e-7),
                         "tau_in_s": max(tau_in, 1e-7), "tau_in_slope_s": slope,
                         "tau_in_base_s": max(tau_in - slope * input_tokens, 0.0),
                         "decode_intercept_s": max(m1[2] - tau, 0.0), "prefill_intercept_s": max(m1[0] - tau_in, 0.0),
                         "decode_relay_s": mk[3], "prefill_relay_s": mk[1], "decode_busy_k_s": mk[2],
                         "prefill_busy_k_s": mk[0], "parallelism": par,
                         "block_bytes": model.block_gb * GB, "cache_bytes_per_session_block":
                             model.cache_gb(input_tokens + max_tokens) * GB})
    types = {r["server_type"]: ServerType(r["server_type"], mem_gb=real[r["server_type"]].mem_gb, tau_s=r["tau_s"],
                                          tau_in_slope_s=r["tau_in_slope_s"], tau_in_base_s=r["tau_in_base_s"],
                                          max_blocks=real[r["server_type"]].max_blocks,
                                          inference_rps=1.0 / r["tau_s"], network_rps=1e6)
             for r in rows}
    step_s = client_step_s(parts)
    overheads = Overheads(
        per_token_s=float(np.mean([r["decode_relay_s"] + r["decode_intercept_s"] for r in rows])),
        input_base_s=float(np.mean([r["prefill_relay_s"] + r["prefill_intercept_s"] for r in rows])),
        input_per_token_s=0.0,
        initial_s=step_s * max_tokens,  # the client's own work per token, once per request in the model
        petals_serialization_s=Overheads().petals_serialization_s,
    )
    for r in rows:
        r.update(per_token_overhead_s=overheads.per_token_s, input_overhead_s=overheads.input_base_s,
                 client_step_s=step_s)
    return Calibration(types, overheads, rows)


def in_situ(hops: list[dict[str, Any]], requests: list[dict[str, Any]], server_type: list[str],
            isolated: Calibration, input_tokens: int, max_tokens: int) -> Calibration:
    """Re-fit τ, τ^I and the per-hop overheads from warm-up requests on a deployment (disjoint from the ones
    evaluated): the servers' busy time per block as it is under this deployment's load, and the relay cost
    (hop wall time − emulated RTT − busy) and allocation time the client sees. Types absent from the hops keep
    their isolated values; τ^I keeps the isolated slope in l^I. Means, not medians: the validated metric is a
    mean, and a loaded machine's occasional slow hop counts in it."""
    if not hops:
        return isolated
    dec = [h for h in hops if h["step"] > 0 and not h["replay"]]
    pre = [h for h in hops if h["step"] == 0 and not h["replay"]]
    types = dict(isolated.types)
    rows = []
    for name, t in isolated.types.items():
        d = [h["busy_s"] / (h["last"] - h["first"]) for h in dec if server_type[h["server"]] == name]
        q = [h["busy_s"] / (h["last"] - h["first"]) for h in pre if server_type[h["server"]] == name]
        if not d or not q:
            continue
        tau_in = float(np.mean(q))
        base = max(tau_in - t.tau_in_slope_s * input_tokens, 0.0)
        types[name] = ServerType(name, t.mem_gb, float(np.mean(d)), t.tau_in_slope_s, base, t.max_blocks,
                                 1.0 / float(np.mean(d)), t.network_rps)
        rows.append({"server_type": name, "tau_s": types[name].tau_s, "tau_in_s": tau_in, "hops": len(d)})
    step_s = float(isolated.rows[0]["client_step_s"]) if isolated.rows else 0.0
    alloc = float(np.mean([r["wait_s"] for r in requests])) if requests else 0.0
    overheads = Overheads(
        per_token_s=float(np.mean([h["hop_s"] - h["rtt_s"] - h["busy_s"] for h in dec])) if dec else 0.0,
        input_base_s=float(np.mean([h["hop_s"] - h["rtt_s"] - h["busy_s"] for h in pre])) if pre else 0.0,
        input_per_token_s=0.0, initial_s=step_s * max_tokens + alloc,
        petals_serialization_s=isolated.overheads.petals_serialization_s)
    for r in rows:
        r.update(per_token_overhead_s=overheads.per_token_s, input_overhead_s=overheads.input_base_s,
                 allocation_s=alloc)
    return Calibration(types, overheads, rows)
