"""Controller overhead per scheduling decision on a 64-server (64 × 4 slots) simulated live cluster.

Run from the repository root: ``PYTHONPATH=. python benchmarks/controller_overhead.py [--decisions 2000]``.
One decision = what the real controller does per cold start before any process starts: build the read-only
``ClusterView`` from live server state (``Controller.view``) and ask the policy (``schedule``). Servers hold a
mix of busy, idle and loading instances of 100 models and DRAM/SSD copies. Prints median and P99 per policy
(not a test: numbers depend on the machine, which is printed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serverless_scale import machine

from schedulers.base import Request
from schedulers.catalog import model_infos
from schedulers.cluster import Cluster
from schedulers.fixed import FixedKeepAlive
from schedulers.real.controller import Controller
from schedulers.real.records import RealConfig
from schedulers.real.slots import LiveInstance, LiveServer
from schedulers.serverless import ServerlessScheduler
from schedulers.serverlessllm import ServerlessLLMScheduler
from schedulers.shepherd import ShepherdScheduler

MODELS = [f"opt-6.7b#{k}" for k in range(70)] + [f"opt-13b#{k}" for k in range(30)]
SERVERS, GPUS = 64, 4


def live_cluster(root: Path, rng: np.random.Generator) -> Controller:
    cluster = Cluster(servers=SERVERS, gpus_per_server=GPUS)
    infos = model_infos(MODELS, cluster, "fp16")
    gbps = {"dram": cluster.dram_gbps, "ssd": cluster.ssd_gbps, "remote": cluster.remote_gbps}
    servers = [LiveServer(s, GPUS, root / f"s{s}", root / f"d{s}", int(512e9), int(2000e9), gbps)
               for s in range(SERVERS)]
    ctl = Controller(servers, infos, ServerlessLLMScheduler(), FixedKeepAlive(), None, None,  # type: ignore[arg-type]
                     RealConfig())
    iid = 0
    for s in servers:
        for m in rng.choice(MODELS, size=8, replace=False):
            s.ssd.insert(str(m), infos[str(m)].size_bytes)
        for m in rng.choice(MODELS, size=3, replace=False):
            s.dram.insert(str(m), infos[str(m)].size_bytes)
        used = 0
        while used < GPUS:
            m = str(rng.choice(MODELS))
            info = infos[m]
            if used + info.gpus > GPUS:
                break
            state = str(rng.choice(["busy", "idle", "loading"], p=[0.6, 0.3, 0.1]))
            inst = LiveInstance(iid, m, s.sid, info.gpus, state=state, acquired_s=0.0, idle_since_s=0.0,
                                request=iid if state == "busy" else None, prompt_tokens=128, first_token_s=1.0,
                                done_s=1.0 + 200 * info.decode_s_per_token, decode_s_per_token=info.decode_s_per_token)
            s.instances[iid] = inst
            ctl.instances[iid] = inst
            iid += 1
            used += info.gpus
        s.free_gpus = GPUS - used
    ctl._t0 = time.time() - 2.0
    return ctl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"machine: {machine()}")
    print(f"{SERVERS} servers x {GPUS} slots, {len(MODELS)} models, {args.decisions} decisions per policy")
    with tempfile.TemporaryDirectory() as tmp:
        ctl = live_cluster(Path(tmp), rng)
        print(f"instances: {len(ctl.instances)}")
        for name, policy in (("serverlessllm", ServerlessLLMScheduler()), ("serverless", ServerlessScheduler()),
                             ("shepherd", ShepherdScheduler())):
            view_s, total_s = [], []
            for k in range(args.decisions):
                req = Request(k, str(rng.choice(MODELS)), ctl.now(), 128, 128)
                t0 = time.perf_counter()
                view = ctl.view()
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
