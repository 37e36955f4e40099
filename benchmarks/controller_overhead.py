"""Controller overhead per scheduling decision on a 64-server (64 × 4 slots) simulated live cluster.

Run from the repository root: ``PYTHONPATH=. python benchmarks/controller_overhead.py [--decisions 2000]``.
One decision = what the real controller does per cold start before any process starts: build the read-only
``ClusterView`` from live server state (``Lifecycle.view``: one changed server's view rebuilt, as after a decision)
and ask the policy (``schedule``). Servers hold a
mix of busy, idle and loading instances of 100 models and DRAM/SSD copies. Prints median and P99 per policy
(not a test: numbers depend on the machine, which is printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serverless_scale import machine

from schedulers.base import Request
from schedulers.catalog import model_infos
from schedulers.clock import SimClock, WallClock
from schedulers.cluster import Cluster
from schedulers.fixed import FixedKeepAlive
from schedulers.lifecycle import Lifecycle
from schedulers.serverless import ServerlessScheduler
from schedulers.serverlessllm import ServerlessLLMScheduler
from schedulers.shepherd import ShepherdScheduler
from schedulers.simulator import SimBackend
from schedulers.state import Instance

MODELS = [f"opt-6.7b#{k}" for k in range(70)] + [f"opt-13b#{k}" for k in range(30)]
SERVERS, GPUS = 64, 4


def live_cluster(rng: np.random.Generator) -> Lifecycle:
    """The lifecycle the real controller runs, on a wall clock, with servers full of instances (its backend does
    nothing here: only ``view`` is timed)."""
    cluster = Cluster(servers=SERVERS, gpus_per_server=GPUS, dram_gb=512, ssd_gb=2000)
    infos = model_infos(MODELS, cluster, "fp16")
    clock = WallClock()
    life = Lifecycle(clock, cluster, infos, ServerlessLLMScheduler(), FixedKeepAlive(), SimBackend(SimClock(), cluster))
    for s in life.servers:
        for m in rng.choice(MODELS, size=8, replace=False):
            s.ssd.insert(str(m), infos[str(m)].size_bytes)
        for m in rng.choice(MODELS, size=3, replace=False):
            s.dram.insert(str(m), infos[str(m)].size_bytes)
        used = 0
        while used < GPUS:
            info = infos[str(rng.choice(MODELS))]
            if used + info.gpus > GPUS:
                break
            inst = Instance(len(life.instances), info, s, 0.0)
            inst.state = str(rng.choice(["busy", "idle", "loading"], p=[0.6, 0.3, 0.1]))
            inst.request = inst.id if inst.state == "busy" else -1
            inst.prompt_tokens, inst.first_token_s = 128, 1.0
            inst.done_s = 1.0 + 200 * info.decode_s_per_token
            s.instances[inst.id] = life.instances[inst.id] = inst
            used += info.gpus
        s.free_gpus = GPUS - used
        s.dirty()
    clock.start()
    return life


def dirty_one(life: Lifecycle, rng: np.random.Generator) -> None:
    """What a decision's aftermath does to the views: one server changed (its view is rebuilt next time)."""
    life.servers[int(rng.integers(SERVERS))].dirty()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"machine: {machine()}")
    print(f"{SERVERS} servers x {GPUS} slots, {len(MODELS)} models, {args.decisions} decisions per policy")
    life = live_cluster(rng)
    print(f"instances: {len(life.instances)}")
    for name, policy in (("serverlessllm", ServerlessLLMScheduler()), ("serverless", ServerlessScheduler()),
                         ("shepherd", ShepherdScheduler())):
        view_s, total_s = [], []
        for k in range(args.decisions):
            req = Request(k, str(rng.choice(MODELS)), life.clock.now(), 128, 128)
            dirty_one(life, rng)
            t0 = time.perf_counter()
            view = life.view()
            t1 = time.perf_counter()
            policy.schedule(req, view)
            t2 = time.perf_counter()
            view_s.append(t1 - t0)
            total_s.append(t2 - t0)
        v, t = np.array(view_s) * 1e3, np.array(total_s) * 1e3
        print(f"{name:14s} per decision: median {np.median(t):.3f} ms, P99 {np.percentile(t, 99):.3f} ms "
              f"(view build: median {np.median(v):.3f} ms, P99 {np.percentile(v, 99):.3f} ms)")


if __name__ == "__main__":
    main()
