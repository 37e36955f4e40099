"""Figures of the loading experiment, drawn from the files a run wrote (never from live objects)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from experiments.loading.metrics import PHASES

PHASE_LABELS = {"t_imports_s": "imports", "t_device_init_s": "device init", "t_weights_s": "weights",
                "t_model_build_s": "model build", "t_first_token_s": "first token"}


def _breakdown(ax: plt.Axes, ok: pd.DataFrame) -> None:
    med = ok.groupby(["loader", "cache_state"])[PHASES].median().reset_index()
    med["cell"] = med["loader"] + "\n" + med["cache_state"]
    bottom = pd.Series(0.0, index=med.index)
    colors = sns.color_palette("muted", len(PHASES))
    for phase, color in zip(PHASES, colors, strict=True):
        ax.bar(med["cell"], med[phase], bottom=bottom, label=PHASE_LABELS[phase], color=color)
        bottom += med[phase]
    ax.set_ylabel("median time (s)")
    ax.set_title("cold-start breakdown (fresh process → first token)")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8, labelrotation=30)


def plot_loading(run_dir: Path) -> list[Path]:
    """``loading.png``: load time per loader and cache state (bars: median, points: trials) and the breakdown."""
    trials = pd.read_parquet(run_dir / "trials.parquet")
    ok = trials[trials["ok"].astype(bool)]
    if ok.empty:
        return []
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    order = sorted(ok["loader"].unique())
    sns.barplot(data=ok, x="loader", y="load_s", hue="cache_state", estimator="median", errorbar=("pi", 50),
                order=order, ax=axes[0])
    sns.stripplot(data=ok, x="loader", y="load_s", hue="cache_state", dodge=True, order=order, ax=axes[0],
                  palette="dark:k", size=3, legend=False)
    first = ok.iloc[0]
    axes[0].set_title(f"load time, {first['model']} {first['dtype']} on {first['device']} "
                      f"({first['bytes'] / 1e9:.2f} GB)")
    axes[0].set_ylabel("load time (s), median and IQR")
    _breakdown(axes[1], ok)
    fig.tight_layout()
    path = run_dir / "loading.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_report(summary: pd.DataFrame, path: Path) -> Path:
    """The sweep figure: median load time per model (and dtype) per loader, one panel per cache state."""
    ok = summary[summary["n"] > 0].copy()
    ok["model_dtype"] = ok["model"] + " " + ok["dtype"]
    sns.set_theme(style="whitegrid")
    grid = sns.catplot(data=ok, x="model_dtype", y="load_s_median", hue="loader", col="cache_state", kind="bar",
                       height=4, aspect=1.3, sharey=False)
    grid.set_axis_labels("model, dtype", "median load time (s)")
    grid.figure.tight_layout()
    grid.figure.savefig(path, dpi=120)
    plt.close(grid.figure)
    return path
