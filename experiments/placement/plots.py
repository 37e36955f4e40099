"""Figures for the placement experiments, read back from a run directory (never from live objects)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def plot_bprr(run_dir: Path) -> list[Path]:
    """Per-token time by policy and scenario (bars over Monte Carlo runs), plus ours vs paper (Table III)."""
    out: list[Path] = []
    requests_path = run_dir / "requests.parquet"
    if not requests_path.exists():
        return out
    df = pd.read_parquet(requests_path)
    if df.empty:
        return out
    df["cell"] = (
        df["scenario"].astype(str)
        + " λ="
        + df["arrival_rate_per_s"].astype(str)
        + " l="
        + df["max_tokens"].astype(str)
    )
    grid = sns.catplot(
        data=df,
        x="cell",
        y="per_token_s",
        hue="policy",
        col="allocation_delays",
        kind="bar",
        errorbar=("ci", 95),
        height=4,
        aspect=1.6,
        sharey=False,
    )
    grid.set_xticklabels(rotation=60, ha="right")
    grid.set_axis_labels("scenario", "average time per token (s)")
    path = run_dir / "per_token_s.png"
    grid.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    out.append(path)
    table_path = run_dir / "table3.parquet"
    if table_path.exists():
        t = pd.read_parquet(table_path)
        t = t[~t["allocation_delays"].astype(bool)] if (~t["allocation_delays"].astype(bool)).any() else t
        t["cell"] = (
            "c"
            + t["client_group"].astype(str)
            + " λ="
            + t["arrival_rate_per_s"].astype(str)
            + " l="
            + t["max_tokens"].astype(str)
        )
        long = t.melt(
            id_vars="cell",
            value_vars=[
                "petals_per_token_s",
                "proposed_per_token_s",
                "paper_petals_per_token_s",
                "paper_proposed_per_token_s",
            ],
            var_name="series",
            value_name="per_token_s",
        )
        fig, ax = plt.subplots(figsize=(10, 4))
        sns.barplot(data=long, x="cell", y="per_token_s", hue="series", ax=ax)
        ax.tick_params(axis="x", rotation=60)
        ax.set_ylabel("average time per token (s)")
        ax.set_title("Table III: ours (allocation delays off) vs paper")
        path = run_dir / "table3.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        out.append(path)
    return out


def plot_optimality(run_dir: Path) -> list[Path]:
    """ECDF of CG-BPRR's relative gap to the MILP optimum over random instances."""
    path = run_dir / "instances.parquet"
    if not path.exists():
        return []
    df = pd.read_parquet(path)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.ecdfplot(data=df, x="gap_pct", ax=ax)
    ax.set_xlabel("CG-BPRR objective above MILP optimum (%)")
    png = run_dir / "optimality_gap.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [png]
