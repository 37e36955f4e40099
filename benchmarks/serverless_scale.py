"""Scale benchmark of the serverless simulator: 10k, 100k and 1M requests on 64 servers × 4 GPUs with 100
models.

Run from the repository root: ``PYTHONPATH=. python benchmarks/serverless_scale.py [--sizes 10000 100000
1000000]``.
Prints wall time and simulator events per second for each size (not a test: numbers depend on the machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from schedulers.catalog import model_infos
from schedulers.cluster import Cluster
from schedulers.fixed import FixedKeepAlive
from schedulers.metrics import summarize
from schedulers.serverlessllm import ServerlessLLMScheduler
from schedulers.simulator import SimConfig, Simulator
from schedulers.workload import GammaArrivals, UniformTokens, Workload, ZipfPopularity

MODELS = [f"opt-6.7b#{k}" for k in range(70)] + [f"opt-13b#{k}" for k in range(30)]


def machine() -> str:
    """CPU model and the cores this process may use (the numbers only mean something next to these)."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {cores} cores (load average {load:.1f} at start), python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rps", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cluster = Cluster(
        name="scale",
        servers=64,
        gpus_per_server=4,
        gpu_mem_gb=80,
        gpu_hbm_gbps=2039,
        gpu_tflops=312,
        dram_gb=1024,
        ssd_gb=4000,
        dram_gbps=25,
        ssd_gbps=7,
        remote_gbps=3.125,
    )
    infos = model_infos(MODELS, cluster)
    print(f"machine: {machine()}")
    print(
        f"cluster: {cluster.servers} servers x {cluster.gpus_per_server} GPUs, {len(MODELS)} models, "
        f"rps {args.rps}, Gamma CV 2, Zipf popularity; scheduler serverlessllm, keep-alive fixed 60 s"
    )
    print(
        f"{'requests':>10} {'gen_s':>7} {'sim_s':>8} {'events':>10} {'events/s':>10} {'sim_time_s':>11} "
        f"{'p99_ttft_s':>10} {'cold':>6}"
    )
    for n in args.sizes:
        t0 = time.perf_counter()
        workload = Workload(
            models=MODELS,
            rps=args.rps,
            duration_s=None,
            num_requests=n,
            arrivals=GammaArrivals(2.0),
            popularity=ZipfPopularity(1.0),
            tokens=UniformTokens(64, 256, 32, 160),
        )
        reqs = workload.generate(args.seed)
        t1 = time.perf_counter()
        sim = Simulator(cluster, infos, ServerlessLLMScheduler(), FixedKeepAlive(60.0), SimConfig())
        result = sim.run(reqs)
        t2 = time.perf_counter()
        row = summarize(result.requests, result.stats)
        events = int(result.stats["events"])
        print(
            f"{len(reqs):>10} {t1 - t0:>7.2f} {t2 - t1:>8.2f} {events:>10} {events / (t2 - t1):>10.0f} "
            f"{result.stats['sim_end_s']:>11.0f} {row['ttft_s_p99']:>10.2f} {row['cold_start_rate']:>6.3f}",
            flush=True,
        )
        if len(reqs) >= 1_000_000:
            print(f"target (1M requests in < 120 s): {'met' if t2 - t1 < 120 else 'missed'} ({t2 - t1:.1f} s)")


if __name__ == "__main__":
    main()
