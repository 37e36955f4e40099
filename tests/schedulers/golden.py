"""The golden serverless scenarios: one seeded trace under several policies, keep-alives and storage settings,
whose request and summary tables are pinned in ``tests/schedulers/golden/`` (``test_golden.py`` compares).

The pinned files are the simulator's output at the commit that wrote them. A change that moves them on purpose
(a decided behaviour, a bug fix) regenerates them in a commit of its own whose message says what moved and why:

    .venv/bin/python -m tests.schedulers.golden --write      # rewrites tests/schedulers/golden/*.csv
    git diff --stat tests/schedulers/golden/                  # then read what moved before committing

Without ``--write`` it prints each scenario's summary (what the test would compare) and writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from schedulers.base import KeepAlive, Scheduler
from schedulers.catalog import model_infos
from schedulers.cluster import Cluster, ModelTimes, RuntimeTimes
from schedulers.fixed import FixedKeepAlive
from schedulers.hybrid_histogram import HybridHistogramKeepAlive
from schedulers.kserve import KServeScheduler
from schedulers.metrics import summarize
from schedulers.serverless import ServerlessScheduler
from schedulers.serverlessllm import ServerlessLLMScheduler
from schedulers.shepherd import ShepherdScheduler
from schedulers.simulator import SimConfig, Simulator
from schedulers.workload import GammaArrivals, RequestArrays, UniformTokens, Workload, ZipfPopularity

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
REQUESTS_CSV = GOLDEN_DIR / "requests.csv"
SUMMARY_CSV = GOLDEN_DIR / "summary.csv"
SEED = 7
TIMEOUT_120 = SimConfig(timeout_s=120.0)  # a timeout the bursts reach (Shepherd's restarts)
# Summary columns that are not a function of the inputs (wall time) are not pinned.
UNPINNED = ("wall_s",)

MODELS = ("opt-6.7b#0", "opt-6.7b#1", "opt-6.7b#2", "opt-13b#0", "opt-13b#1", "opt-30b#0")


def cluster(**overrides: object) -> Cluster:
    """3 servers × 2 A40s; DRAM holds about two 13B checkpoints, SSD a few; one SSD replica of each checkpoint;
    measured-like build and start-up times for two architectures (so both enter the loads)."""
    base: dict[str, object] = dict(
        name="golden", servers=3, gpus_per_server=2, dram_gb=60, ssd_gb=150, ssd_replicas=1,
        model_times={"opt-13b": ModelTimes(build_s=0.4, startup_s=2.5), "opt-6.7b": ModelTimes(startup_s=1.5)},
    )
    base.update(overrides)
    return Cluster(**base)  # type: ignore[arg-type]


def trace() -> RequestArrays:
    """About 250 bursty requests (Gamma CV 4) over the six models (Zipf), long enough outputs to keep GPUs busy."""
    return Workload(models=MODELS, rps=0.3, duration_s=None, num_requests=250, arrivals=GammaArrivals(4.0),
                    popularity=ZipfPopularity(1.0), tokens=UniformTokens(32, 512, 16, 300)).generate(SEED)


def hybrid(demote_to: tuple[str, ...] = ("dram", "ssd")) -> HybridHistogramKeepAlive:
    return HybridHistogramKeepAlive(bin_s=5, range_s=600, min_samples=3, cv_threshold=0.0,
                                    default_keep_alive_s=60, demote_to=demote_to)


@dataclass(frozen=True)
class Scenario:
    """One pinned run: a name, the policy pair (built fresh: keep-alives learn), the cluster, the simulator."""

    name: str
    scheduler: Callable[[], Scheduler]
    keepalive: Callable[[], KeepAlive]
    cluster: Callable[[], Cluster] = cluster
    sim: SimConfig = TIMEOUT_120


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("sllm-fixed", ServerlessLLMScheduler, lambda: FixedKeepAlive(30.0)),
    Scenario("sllm-hybrid", ServerlessLLMScheduler, hybrid),
    Scenario("sllm-nocache", lambda: ServerlessLLMScheduler(cache_to=(), tier_upgrade=False),
             lambda: FixedKeepAlive(10.0, demote_to=())),
    Scenario("sllm-pool-slots", ServerlessLLMScheduler, lambda: FixedKeepAlive(30.0),
             lambda: cluster(load_slots=2, store_gbps=2.0,
                             runtime=RuntimeTimes("pool", handoff_s=0.05, pool_size=1, worker_start_s=6.0),
                             model_times={})),
    Scenario("shepherd-fixed", ShepherdScheduler, lambda: FixedKeepAlive(30.0)),
    Scenario("shepherd-hybrid-ssd", lambda: ShepherdScheduler(cache_to=("ssd",)), lambda: hybrid(("ssd",))),
    Scenario("serverless-ssd", lambda: ServerlessScheduler(cache_to=("ssd",)), lambda: FixedKeepAlive(30.0)),
    Scenario("kserve-zero", KServeScheduler, lambda: FixedKeepAlive(0.0, demote_to=())),
)


def run(scenario: Scenario, reqs: RequestArrays) -> tuple[pd.DataFrame, dict[str, float]]:
    """One scenario's requests table (with a ``scenario`` column) and summary row."""
    c = scenario.cluster()
    infos = model_infos(list(reqs.models), c)
    result = Simulator(c, infos, scenario.scheduler(), scenario.keepalive(), scenario.sim).run(reqs)
    df = result.requests.copy()
    df.insert(0, "scenario", scenario.name)
    row = {k: v for k, v in summarize(result.requests, result.stats).items() if k not in UNPINNED}
    for key in ("migrations_aborted", "pool_wait_s", "runtime_wait_s", "sim_end_s"):
        row[key] = float(result.stats.get(key, 0.0))
    return df, {"scenario": scenario.name, **row}  # type: ignore[dict-item]


def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every scenario on the same trace: (requests, summary), as the golden files hold them."""
    reqs = trace()
    frames, rows = [], []
    for scenario in SCENARIOS:
        df, row = run(scenario, reqs)
        frames.append(df)
        rows.append(row)
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


def read_golden() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pinned tables, read back exactly (floats round-trip; empty strings stay strings)."""
    opts = {"keep_default_na": False, "na_values": ["NaN"]}
    return pd.read_csv(REQUESTS_CSV, **opts), pd.read_csv(SUMMARY_CSV, **opts)  # type: ignore[arg-type]


def as_written(df: pd.DataFrame) -> pd.DataFrame:
    """A table as it reads back from CSV (the dtypes a comparison with the golden file needs)."""
    from io import StringIO

    opts = {"keep_default_na": False, "na_values": ["NaN"]}
    return pd.read_csv(StringIO(df.to_csv(index=False, na_rep="NaN")), **opts)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the golden files from the current code")
    args = parser.parse_args()
    requests, summary = tables()
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.to_string(index=False))
    if args.write:
        GOLDEN_DIR.mkdir(exist_ok=True)
        requests.to_csv(REQUESTS_CSV, index=False, na_rep="NaN")
        summary.to_csv(SUMMARY_CSV, index=False, na_rep="NaN")
        print(f"wrote {REQUESTS_CSV} ({len(requests)} rows) and {SUMMARY_CSV} ({len(summary)} rows)")


if __name__ == "__main__":
    main()
