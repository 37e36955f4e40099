"""Re-simulate a ``sim_vs_real`` run folder from its real tables (no real run): the calibrated simulation with each
cold start's start-up drawn from the run's measured ones (what ``sim_vs_real`` does), beside one constant start-up
per architecture (the calibration before the draw), and the simulator's error per metric for each.

    PYTHONPATH=. python benchmarks/sim_vs_real_resimulate.py results/reference/sim_vs_real_cpu [--replicates 20]

Takes a minute on a 2-core VM; the folder must hold ``config.yaml``, ``requests.parquet`` and ``cold_starts.parquet``
of a run with the fresh runtime.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from experiments.serverless import validation
from experiments.serverless.real import trace
from experiments.serverless.simulated import policies_of


def errors(cfg: Any, run: Path, replicates: int, draw: bool) -> list[dict[str, Any]]:
    """Per policy: the relative error (%) of the median over replicates of each compared metric."""
    requests, models = trace(cfg)
    real_all = pd.read_parquet(run / "requests.parquet")
    cold_all = pd.read_parquet(run / "cold_starts.parquet")
    rows = []
    for name, entry in policies_of(cfg):
        real = real_all[(real_all["policy"] == name) & (real_all["mode"] == "real")]
        real = real.drop(columns=["policy", "runtime", "mode", "replicate"], errors="ignore").reset_index(drop=True)
        cold = cold_all[cold_all["policy"] == name].drop(columns=["policy"]).reset_index(drop=True)
        sims, _, _ = validation.simulate_calibrated(cfg, entry, models, requests, real, cold, {"runtime": "fresh"},
                                                    replicates if draw else 1, draw=draw)
        want = validation.metric_values(real, {})
        got = [validation.metric_values(s.requests, s.stats) for s in sims]
        for metric in ("ttft_s_p50", "ttft_s_p99", "cold_starts"):
            sim = float(np.median([g[metric] for g in got]))
            rows.append({"policy": name, "start-up": "draw" if draw else "constant", "metric": metric,
                         "real": want[metric], "sim": sim,
                         "error_pct": 100 * abs(sim - want[metric]) / want[metric] if want[metric] else np.nan})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a sim_vs_real run folder (or results/reference/sim_vs_real_cpu)")
    parser.add_argument("--replicates", type=int, default=20)
    args = parser.parse_args()
    cfg = OmegaConf.load(args.run / "config.yaml")
    table = pd.DataFrame(errors(cfg, args.run, args.replicates, True) + errors(cfg, args.run, args.replicates, False))
    print(table.pivot_table(index=["policy", "start-up"], columns="metric", values="error_pct").round(2).to_string())


if __name__ == "__main__":
    main()
