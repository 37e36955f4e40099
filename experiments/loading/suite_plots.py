"""Figures of the loading suite (sllm_loading, sllm_ablation, dtype_coldstart, calibrate), drawn from run files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def _ok_summary(run_dir: Path) -> pd.DataFrame:
    summary = pd.read_csv(run_dir / "summary.csv")
    return summary[summary["n"] > 0].copy()


def plot_per_model(run_dir: Path, name: str = "sllm_loading") -> list[Path]:
    """``<name>.png``: median load time per model per loader, one panel per cache state (log scale)."""
    ok = _ok_summary(run_dir)
    if ok.empty:
        return []
    ok["model"] = ok["model"] + "\n" + (ok["bytes"] / 1e9).map("{:.2f} GB".format)
    sns.set_theme(style="whitegrid")
    grid = sns.catplot(data=ok, x="model", y="load_s_median", hue="loader", col="cache_state", kind="bar",
                       height=4, aspect=1.2, sharey=False)
    grid.set(yscale="log")
    for state, ax in grid.axes_dict.items():  # a log axis needs a visible floor, else bars start at an arbitrary cut
        values = ok.loc[ok["cache_state"] == state, "load_s_median"]
        if len(values):
            ax.set_ylim(values.min() / 4, values.max() * 1.5)
    grid.set_axis_labels("model", "median load time (s, log)")
    device = ok["device"].iloc[0]
    grid.figure.suptitle(f"load time per model per loader ({device}, {ok['dtype'].iloc[0]})", y=1.02)
    path = run_dir / f"{name}.png"
    grid.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    return [path]


def plot_calibrate(run_dir: Path) -> list[Path]:
    return plot_per_model(run_dir, "calibrate")


def plot_ablation(run_dir: Path) -> list[Path]:
    """``sllm_ablation.png``: load time after each optimization is switched on, and the cumulative speedup."""
    gains = pd.read_parquet(run_dir / "gains.parquet")
    if gains.empty:
        return []
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    order = list(dict.fromkeys(gains.sort_values("step")["loader"]))
    sns.barplot(data=gains, x="loader", y="load_s_median", hue="cache_state", order=order, ax=axes[0])
    axes[0].set_ylabel("median load time (s)")
    axes[0].set_title("native loader, optimizations switched on one by one")
    sns.lineplot(data=gains, x="step", y="speedup_vs_start", hue="cache_state", marker="o", ax=axes[1])
    axes[1].set_xticks(range(len(order)), order)
    axes[1].set_ylabel("speedup over the first step (×)")
    axes[1].set_title("cumulative gain")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=25, labelsize=8)
    fig.tight_layout()
    path = run_dir / "sllm_ablation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_dtype_coldstart(run_dir: Path) -> list[Path]:
    """``dtype_coldstart.png``: cold-start time (spawn → first token) and checkpoint bytes per dtype."""
    ok = _ok_summary(run_dir)
    if ok.empty:
        return []
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    order = list(dict.fromkeys(ok["dtype"]))
    sns.barplot(data=ok, x="dtype", y="cold_start_s_median", hue="loader", order=order, ax=axes[0],
                errorbar=None)
    axes[0].set_ylabel("median cold start (s)")
    axes[0].set_title(f"cold start per dtype, {ok['model'].iloc[0]} ({ok['device'].iloc[0]})")
    sizes = ok.drop_duplicates("dtype").set_index("dtype").loc[order, "bytes"] / 1e9
    axes[1].bar(order, sizes.to_numpy())
    axes[1].set_ylabel("checkpoint size (GB)")
    axes[1].set_title("bytes per dtype")
    fig.tight_layout()
    path = run_dir / "dtype_coldstart.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
