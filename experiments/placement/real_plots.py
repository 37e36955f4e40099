"""Figures of ``experiment=pipeline_real``, read back from the run directory: real vs simulated, per hop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from experiments import style

METRICS = ("per_token_s", "ttft_s")


def plot_pipeline_real(run_dir: Path) -> list[Path]:
    """Mean per-token time and TTFT per policy, measured beside simulated (IQR over requests); per-hop decode
    time by server type (``hops.parquet``)."""
    out: list[Path] = []
    df = style.read_table(run_dir, "requests")
    if df is None or df.empty:
        return out
    policies = list(dict.fromkeys(df["policy"]))
    modes = list(dict.fromkeys(df["mode"]))
    fig, axes = style.figure(1, len(METRICS), width=2.8 + 0.9 * len(policies) * len(modes), height=3.4)
    frames = []
    for ax, metric in zip(axes[0], METRICS, strict=True):
        stats = df.groupby(["policy", "mode"], sort=False)[metric].agg(
            mean="mean", q25=lambda s: s.quantile(0.25), q75=lambda s: s.quantile(0.75), n="count").reset_index()
        plotted = style.bars(ax, stats, "policy", "mode", "mean", lo=stats["q25"], hi=stats["q75"], n="n",
                             order=policies, hue_order=modes)
        frames.append(plotted.assign(metric=metric))
        ax.set_ylabel(f"mean {style.label(metric)}")
    fig.suptitle("Real chain vs simulator (same placement, routing, seeded arrivals)")
    style.legend_outside(fig, axes[0], title="mode",
                         notes=[style.n_note(df.groupby(["policy", "mode"]).size(), "requests"),
                                "bars: means; error bars: IQR over requests"])
    out += style.save(fig, run_dir / "pipeline_real_vs_sim", pd.concat(frames, ignore_index=True))
    hops = style.read_table(run_dir, "hops")
    if hops is not None:
        decode = hops[(hops["step"] > 0) & (~hops["replay"].astype(bool))].copy()
        if len(decode):
            decode["hop_ms"] = 1e3 * decode["hop_s"]
            fig, axes = style.figure(1, 1, width=6.5, height=3.6)
            ax = axes[0][0]
            hop_policies = list(dict.fromkeys(decode["policy"]))
            sns.boxplot(data=decode, x="server_type", y="hop_ms", hue="policy", hue_order=hop_policies, ax=ax,
                        palette={p: style.color(p) for p in hop_policies}, whis=(5, 95), fliersize=2, legend=True)
            ax.get_legend().remove()
            ax.set_ylabel(f"{style.label('hop_ms')}, incl. emulated RTT")
            ax.set_xlabel("server type")
            counts = decode.groupby(["server_type", "policy"]).size()
            style.legend_outside(fig, [ax], title="policy",
                                 notes=["box: IQR, line: median, whiskers: P5–P95",
                                        f"n = {counts.min()}–{counts.max()} decode hops per box"])
            out += style.save(fig, run_dir / "pipeline_real_hops",
                              decode.groupby(["server_type", "policy"])["hop_ms"].describe().reset_index())
    return out
