"""Figures of a serverless run, drawn from its files: latency CDF, P99 vs RPS, cold-start breakdown,
keep-alive."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from omegaconf import OmegaConf

BREAKDOWN = ("queue_s", "migration_s", "load_s", "prefill_s")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_cdf(requests: pd.DataFrame, path: Path) -> Path:
    """ECDF of time to first token per policy (the scenario with the most requests)."""
    df = requests
    if "rps" in df.columns and df["rps"].nunique() > 1:
        df = df[df["rps"] == df["rps"].max()]
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.ecdfplot(data=df, x="ttft_s", hue="policy", ax=ax, log_scale=True)
    ax.set_xlabel("time to first token (s)")
    return _save(fig, path)


def p99_vs_rps(summary: pd.DataFrame, path: Path) -> Path:
    """P99 time to first token against request rate, one line per policy (one panel per token mix)."""
    df = summary[summary["scenario"] == "rps"] if "scenario" in summary.columns else summary
    col = "tokens" if "tokens" in df.columns else None
    g = sns.relplot(
        data=df,
        x="rps",
        y="ttft_s_p99",
        hue="policy",
        style="storage" if "storage" in df.columns else None,
        col=col,
        kind="line",
        marker="o",
        height=3.5,
        aspect=1.2,
    )
    g.set_axis_labels("requests per second", "P99 TTFT (s)")
    g.savefig(path, dpi=120)
    plt.close(g.figure)
    return path


def cold_start_breakdown(requests: pd.DataFrame, path: Path) -> Path:
    """Mean queueing, migration wait, loading and prefill of cold starts, stacked per policy."""
    cold = requests[requests["cold_start"].astype(bool) & ~requests["timed_out"].astype(bool)].copy()
    cold["prefill_s"] = (cold["ttft_s"] - cold["queue_s"] - cold["migration_s"] - cold["load_s"]).clip(
        lower=0
    )
    by = ["policy", "storage"] if "storage" in cold.columns else ["policy"]
    means = cold.groupby(by)[list(BREAKDOWN)].mean()
    fig, ax = plt.subplots(figsize=(6, 4))
    means.plot.bar(stacked=True, ax=ax)
    ax.set_ylabel("mean seconds per cold start")
    return _save(fig, path)


def p99_by_storage(summary: pd.DataFrame, path: Path) -> Path:
    """P99 TTFT per policy under each storage setting, at the highest RPS of the RPS sweep at the base CV (one
    panel per token mix; bars: mean over seeds, with their range when there are several)."""
    df = summary[summary["scenario"] == "rps"] if "scenario" in summary.columns else summary
    df = df[df["rps"] == df["rps"].max()] if "rps" in df.columns else df
    col = "tokens" if "tokens" in df.columns else None
    g = sns.catplot(data=df, x="storage", y="ttft_s_p99", hue="policy", col=col, kind="bar", height=3.5,
                    aspect=1.3, errorbar=("pi", 100) if "seed" in df.columns else None)
    rps = f" at {df['rps'].iloc[0]:g} RPS" if "rps" in df.columns and len(df) else ""
    seeds = f", {df['seed'].nunique()} seeds" if "seed" in df.columns else ""
    g.set_axis_labels(f"storage setting{rps}{seeds}", "P99 TTFT (s)")
    g.savefig(path, dpi=120)
    plt.close(g.figure)
    return path


def keepalive_tradeoff(summary: pd.DataFrame, path: Path) -> Path:
    """Cold-start rate against wasted GPU memory-time (idle instances), one point per keep-alive policy."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.scatterplot(data=summary, x="idle_gpu_gb_s", y="cold_start_rate", hue="policy", s=80, ax=ax)
    ax.set_xlabel("idle GPU memory-time (GB·s)")
    ax.set_ylabel("cold-start rate")
    return _save(fig, path)


def plot_serverless(run_dir: Path) -> list[Path]:
    """Every figure that fits the run's tables (reads ``requests.parquet`` and ``summary.csv``)."""
    run_dir = Path(run_dir)
    requests = pd.read_parquet(run_dir / "requests.parquet")
    summary = pd.read_csv(run_dir / "summary.csv")
    out = [latency_cdf(requests, run_dir / "latency_cdf.png")]
    if (
        "rps" in summary.columns
        and summary.get("scenario", pd.Series(["rps"])).eq("rps").any()
        and summary["rps"].nunique() > 1
    ):
        out.append(p99_vs_rps(summary, run_dir / "p99_vs_rps.png"))
    if "storage" in summary.columns and summary["storage"].nunique() > 1:
        out.append(p99_by_storage(summary, run_dir / "p99_by_storage.png"))
    if requests["cold_start"].any():
        out.append(cold_start_breakdown(requests, run_dir / "cold_start_breakdown.png"))
    return out


def plot_keepalive(run_dir: Path) -> list[Path]:
    """The keep-alive trade-off plus the generic figures."""
    summary = pd.read_csv(Path(run_dir) / "summary.csv")
    return [*plot_serverless(run_dir), keepalive_tradeoff(summary, Path(run_dir) / "keepalive_tradeoff.png")]


def sim_vs_real_cdf(requests: pd.DataFrame, path: Path) -> Path:
    """TTFT ECDFs of the real run and its calibrated simulation, one panel per policy."""
    g = sns.displot(data=requests, x="ttft_s", hue="mode", col="policy", kind="ecdf", height=3.2, aspect=1.1)
    g.set_axis_labels("time to first token (s)", "fraction of requests")
    g.savefig(path, dpi=120)
    plt.close(g.figure)
    return path


def plot_sim_vs_real(run_dir: Path) -> list[Path]:
    """Both CDFs per policy (``experiment=sim_vs_real``)."""
    requests = pd.read_parquet(Path(run_dir) / "requests.parquet")
    return [sim_vs_real_cdf(requests, Path(run_dir) / "sim_vs_real_cdf.png")]


REGIME_KEYS = ["set_over_dram", "set_over_ssd", "rps", "ssd_replicas"]


def regime_table(summary: pd.DataFrame, reference: str = "serverlessllm") -> pd.DataFrame:
    """P99 TTFT ratio of every other policy to ``reference`` per regime cell: the median over seeds, with the
    per-seed minimum and maximum, and the timeouts of both."""
    keys = [k for k in REGIME_KEYS if k in summary.columns]
    seed = ["seed"] if "seed" in summary.columns else []
    ref = summary[summary["policy"] == reference].set_index(keys + seed)
    rows = []
    for policy, df in summary[summary["policy"] != reference].groupby("policy"):
        d = df.set_index(keys + seed)
        ratio = (d["ttft_s_p99"] / ref["ttft_s_p99"]).rename("ratio").reset_index()
        t = pd.concat([d["timeouts"], ref["timeouts"].rename("ref_timeouts")], axis=1).reset_index()
        g = ratio.groupby(keys)["ratio"].agg(["median", "min", "max", "count"]).reset_index()
        g = g.merge(t.groupby(keys)[["timeouts", "ref_timeouts"]].sum().reset_index(), on=keys)
        rows.append(g.assign(policy=policy))
    out = pd.concat(rows, ignore_index=True).rename(
        columns={"median": "p99_ratio", "min": "p99_ratio_min", "max": "p99_ratio_max", "count": "seeds"})
    return out[["policy", *keys, "p99_ratio", "p99_ratio_min", "p99_ratio_max", "seeds", "timeouts",
                "ref_timeouts"]]


def regime_map(table: pd.DataFrame, path: Path, pays_at: float = 1.27) -> Path:
    """Heat maps of the median P99 ratio over (set / DRAM) × (set / SSD): one row per baseline, one column per
    (RPS, SSD replicas). Cells at or above ``pays_at`` are boxed; cells below 1 are hatched."""
    panels = table[["rps", "ssd_replicas"]].drop_duplicates().sort_values(["rps", "ssd_replicas"]).values.tolist()
    policies = sorted(table["policy"].unique())
    fig, axes = plt.subplots(len(policies), len(panels), figsize=(3.6 * len(panels), 3.2 * len(policies)),
                             squeeze=False)
    for i, policy in enumerate(policies):
        for j, (rps, rep) in enumerate(panels):
            ax = axes[i][j]
            d = table[(table["policy"] == policy) & (table["rps"] == rps) & (table["ssd_replicas"] == rep)]
            grid = d.pivot(index="set_over_ssd", columns="set_over_dram", values="p99_ratio").sort_index(
                ascending=False)
            sns.heatmap(grid, ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", center=1.0, vmin=0.5, vmax=2.5,
                        cbar=j == len(panels) - 1)
            for (yi, y), (xi, x) in ((a, b) for a in enumerate(grid.index) for b in enumerate(grid.columns)):
                v = grid.loc[y, x]
                if v >= pays_at:
                    ax.add_patch(plt.Rectangle((xi, yi), 1, 1, fill=False, lw=2, ec="black"))
                elif v < 1:
                    ax.add_patch(plt.Rectangle((xi, yi), 1, 1, fill=False, hatch="//", lw=0, ec="gray"))
            ax.set_title(f"{policy} / serverlessllm, {rps:g} RPS, {rep:g} SSD replica(s)", fontsize=8)
            ax.set_xlabel("checkpoint set / server DRAM")
            ax.set_ylabel("checkpoint set / server SSD")
    fig.suptitle(f"P99 TTFT ratio, median over seeds (box: >= {pays_at}; hatched: < 1); equal storage", fontsize=9)
    return _save(fig, path)


def plot_regime(run_dir: Path) -> list[Path]:
    """The regime map and its table (``regime.csv``), from the run's ``summary.csv``."""
    run_dir = Path(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv")
    table = regime_table(summary)
    table.to_csv(run_dir / "regime.csv", index=False)
    config = run_dir / "config.yaml"
    pays_at = OmegaConf.load(config).experiment.get("pays_at", 1.27) if config.exists() else 1.27
    return [regime_map(table, run_dir / "regime_map.png", float(pays_at))]
