"""Figures of ``experiment=pipeline_real``, read back from the run directory: real vs simulated, per hop."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def plot_pipeline_real(run_dir: Path) -> list[Path]:
    """Per-token time and TTFT per policy, measured beside simulated; per-hop decode time by server type."""
    out: list[Path] = []
    requests_path = run_dir / "requests.parquet"
    if not requests_path.exists():
        return out
    df = pd.read_parquet(requests_path)
    if df.empty:
        return out
    long = df.melt(id_vars=["policy", "mode"], value_vars=["per_token_s", "ttft_s"], var_name="metric",
                   value_name="seconds")
    grid = sns.catplot(data=long, x="policy", y="seconds", hue="mode", col="metric", kind="bar",
                       errorbar=("ci", 95), sharey=False, height=3.6, aspect=1.2)
    grid.figure.suptitle("Real chain vs simulator (same placement, routing, seeded arrivals)", y=1.03)
    path = run_dir / "pipeline_real_vs_sim.png"
    grid.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    out.append(path)
    hops_path = run_dir / "hops.parquet"
    if hops_path.exists():
        hops = pd.read_parquet(hops_path)
        decode = hops[(hops["step"] > 0) & (~hops["replay"])].copy()
        if len(decode):
            decode["hop_ms"] = 1e3 * decode["hop_s"]
            fig, ax = plt.subplots(figsize=(6, 3.6))
            sns.boxplot(data=decode, x="server_type", y="hop_ms", hue="policy", ax=ax)
            ax.set_ylabel("decode hop time (ms, incl. emulated RTT)")
            path = run_dir / "pipeline_real_hops.png"
            fig.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(fig)
            out.append(path)
    return out
