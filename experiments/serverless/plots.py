"""Figures of a serverless run, drawn from its files: latency CDF, P99 vs RPS, cold-start breakdown,
keep-alive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle
from omegaconf import OmegaConf

from experiments import style

BREAKDOWN = ("queue_s", "migration_s", "load_s", "prefill_s")


def _ecdf(ax: Axes, values: pd.Series, name: str) -> None:
    x = np.sort(values.dropna().to_numpy())
    if len(x):
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", color=style.color(name), label=name)


def _panels(requests: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per scenario (and model family): the rows at that scenario's highest request rate."""
    df = requests.copy()
    keys = [k for k in ("scenario",) if k in df.columns]
    if "model" in df.columns and df["model"].astype(str).str.contains("#").any():
        df["family"] = df["model"].astype(str).str.split("#").str[0]
        if df["family"].nunique() > 1:
            keys.append("family")
    groups = df.groupby(keys, sort=False) if keys else [((), df)]
    out = []
    for key, part in groups:
        names = key if isinstance(key, tuple) else (key,)
        title = ", ".join(str(n) for n in names)
        if "rps" in part.columns:
            top = part["rps"].max()
            title += f"{', ' if title else ''}{top:g} req/s" + (" (highest rate)" if part["rps"].nunique() > 1 else "")
            part = part[part["rps"] == top]
        out.append((title, part))
    return out


def by_runtime(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of several runtimes (``runtimes=[fresh,pool]``) are different configurations: each line or bar is
    then a policy on one runtime ("serverlessllm · pool"), never the two merged."""
    if "runtime" not in df.columns or df["runtime"].nunique() < 2:
        return df
    return df.assign(policy=df["policy"].astype(str) + " · " + df["runtime"].astype(str))


def latency_cdf(requests: pd.DataFrame, path: Path,
                heading: str = "Time to first token, every request of the panel's scenario and rate") -> list[Path]:
    """ECDF of time to first token per policy, one panel per scenario at its highest rate (shared x, log)."""
    panels = _panels(requests)
    fig, axes = style.figure(1, len(panels), width=1.8 + 3.4 * len(panels), height=3.3, sharex=True, sharey=True)
    plotted = []
    for ax, (title, part) in zip(axes[0], panels, strict=True):
        for policy, rows in part.groupby("policy", sort=False):
            _ecdf(ax, rows["ttft_s"], str(policy))
            timeouts = int(rows["timed_out"].sum()) if "timed_out" in rows.columns else 0
            plotted.append({"panel": title, "policy": policy, "n": len(rows), "timed_out": timeouts,
                            **{f"ttft_s_p{q}": rows["ttft_s"].quantile(q / 100) for q in (50, 90, 99)}})
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel(f"{style.label('ttft_s')}, log")
    axes[0][0].set_ylabel("fraction of requests")
    table = pd.DataFrame(plotted)
    fig.suptitle(heading)
    style.legend_outside(fig, axes[0], title="policy",
                         notes=[f"n = {table['n'].min()}–{table['n'].max()} requests per line"
                                if table["n"].nunique() > 1 else f"n = {table['n'].iloc[0]} requests per line",
                                f"includes {table['timed_out'].sum()} timed-out requests"
                                if table["timed_out"].sum() else ""])
    return style.save(fig, path, table)


def p99_vs_rps(summary: pd.DataFrame, path: Path) -> list[Path]:
    """P99 time to first token against request rate, one line per policy, one panel per token mix (shared y)."""
    df = summary[summary["scenario"] == "rps"] if "scenario" in summary.columns else summary
    mixes = list(dict.fromkeys(df["tokens"])) if "tokens" in df.columns else [None]
    fig, axes = style.figure(1, len(mixes), width=1.8 + 3.6 * len(mixes), height=3.3, sharey=True)
    frames = []
    for ax, mix in zip(axes[0], mixes, strict=True):
        part = df if mix is None else df[df["tokens"] == mix]
        for policy, rows in part.groupby("policy", sort=False):
            rows = rows.sort_values("rps")
            ax.plot(rows["rps"], rows["ttft_s_p99"], marker="o", color=style.color(policy), label=str(policy))
            frames.append(rows.assign(panel=mix))
        ax.set_xlabel(style.label("rps"))
        if mix is not None:
            ax.set_title(f"token mix: {mix}")
    plotted = pd.concat(frames, ignore_index=True)
    style.log_if_wide(axes[0], plotted["ttft_s_p99"])
    axes[0][0].set_ylabel(style.label("ttft_s_p99"))
    fig.suptitle("P99 time to first token against request rate (scenario rps)")
    n = plotted["requests"]
    style.legend_outside(fig, axes[0], title="policy",
                         notes=[f"n = {n.min()}–{n.max()} requests per point" if n.nunique() > 1
                                else f"n = {n.iloc[0]} requests per point"])
    keep = [c for c in ("panel", "policy", "tokens", "rps", "ttft_s_p99", "requests") if c in plotted.columns]
    return style.save(fig, path, plotted[keep])


def stacked_bars(ax: Axes, means: pd.DataFrame, names: dict[str, str], counts: pd.Series, totals: bool) -> None:
    """One stacked bar per row of ``means`` (index: the x labels), a segment per column in ``names``' order
    (coloured and labelled as the metric it names), each bar annotated with its n (and its total, ``totals``)."""
    bottom = np.zeros(len(means))
    for col, name in names.items():
        values = means[col].fillna(0).to_numpy()
        ax.bar(range(len(means)), values, bottom=bottom, color=style.color(name), label=style.label(name),
               edgecolor="white", linewidth=0.5)
        bottom += values
    for i, count in enumerate(counts):
        text = (f"{bottom[i]:.3g} s\nn={count}" if count else "n=0") if totals else f"n={count}"
        ax.annotate(text, (i, bottom[i]), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=style.NOTE_SIZE)
    ax.set_xticks(range(len(means)), list(means.index), rotation=25, ha="right")


def cold_start_breakdown(requests: pd.DataFrame, path: Path, heading: str = "Cold-start breakdown") -> list[Path]:
    """Mean loading-queue wait, migration wait, loading and prefill of the cold starts that did not time out,
    stacked per policy, one panel per scenario at its highest rate (shared y)."""
    panels = _panels(requests)
    per_panel = max(2.6, 0.6 * requests["policy"].nunique() + 0.8)
    fig, axes = style.figure(1, len(panels), width=3.6 + per_panel * len(panels), height=3.6, sharey=True)
    frames = []
    for ax, (title, part) in zip(axes[0], panels, strict=True):
        cold = part[part["cold_start"].astype(bool) & ~part["timed_out"].astype(bool)].copy()
        cold["prefill_s"] = (cold["ttft_s"] - cold["queue_s"] - cold["migration_s"] - cold["load_s"]).clip(lower=0)
        policies = list(dict.fromkeys(part["policy"]))
        means = cold.groupby("policy")[list(BREAKDOWN)].mean().reindex(policies)
        counts = cold.groupby("policy").size().reindex(policies).fillna(0).astype(int)
        stacked_bars(ax, means, {c: c for c in BREAKDOWN}, counts, totals=False)
        ax.set_title(title)
        frames.append(means.assign(n=counts, panel=title).reset_index())
    axes[0][0].set_ylabel("mean time per cold start (s)")
    fig.suptitle(heading)
    style.legend_outside(fig, axes[0], notes=["rows: cold starts that did not time out; n per bar",
                                              "bars: means (they add up to the mean time to first token); "
                                              "no error bars on a stack"])
    return style.save(fig, path, pd.concat(frames, ignore_index=True))


def p99_by_storage(summary: pd.DataFrame, path: Path) -> list[Path]:
    """P99 TTFT per policy under each storage setting, at the highest rate of the rps scenario (one panel per token
    mix, shared y; bars: median over seeds, whiskers their range, n seeds noted)."""
    df = summary[summary["scenario"] == "rps"] if "scenario" in summary.columns else summary
    df = df[df["rps"] == df["rps"].max()] if "rps" in df.columns else df
    mixes = list(dict.fromkeys(df["tokens"])) if "tokens" in df.columns else [None]
    settings = list(dict.fromkeys(df["storage"]))
    fig, axes = style.figure(1, len(mixes), width=1.8 + 3.8 * len(mixes), height=3.4, sharey=True)
    frames = []
    for ax, mix in zip(axes[0], mixes, strict=True):
        part = df if mix is None else df[df["tokens"] == mix]
        rows = part.groupby(["storage", "policy"], sort=False)["ttft_s_p99"].agg(
            median="median", lo="min", hi="max", n="size").reset_index()
        policies = list(dict.fromkeys(rows["policy"]))
        width = 0.8 / max(len(policies), 1)
        for k, policy in enumerate(policies):
            r = rows[rows["policy"] == policy].set_index("storage").reindex(settings)
            pos = [i + (k - (len(policies) - 1) / 2) * width for i in range(len(settings))]
            ax.bar(pos, r["median"], width=width, color=style.color(policy), label=str(policy),
                   yerr=[r["median"] - r["lo"], r["hi"] - r["median"]], capsize=2)
        ax.set_xticks(range(len(settings)), settings)
        ax.set_xlabel("storage setting")
        if mix is not None:
            ax.set_title(f"token mix: {mix}")
        frames.append(rows.assign(panel=mix))
    axes[0][0].set_ylabel(style.label("ttft_s_p99"))
    rps = f" at {df['rps'].iloc[0]:g} req/s" if "rps" in df.columns and len(df) else ""
    fig.suptitle(f"P99 time to first token per storage setting{rps}")
    plotted = pd.concat(frames, ignore_index=True)
    style.legend_outside(fig, axes[0], title="policy",
                         notes=[f"bars: median over seeds, whiskers min–max; {style.n_note(plotted['n'], 'seeds')}"])
    return style.save(fig, path, plotted)


def keepalive_tradeoff(summary: pd.DataFrame, path: Path) -> list[Path]:
    """Cold-start rate against idle GPU memory-time, one point per keep-alive policy."""
    fig, axes = style.figure(1, 1, width=6.2, height=3.6)
    ax = axes[0][0]
    for _, row in summary.iterrows():
        ax.scatter(row["idle_gpu_gb_s"], row["cold_start_rate"], s=60, color=style.color(row["policy"]),
                   label=str(row["policy"]), zorder=3, edgecolor="0.2", linewidth=0.5)
    ax.set_xlabel(style.label("idle_gpu_gb_s"))
    ax.set_ylabel(style.label("cold_start_rate"))
    ax.set_ylim(0, min(1.05, max(summary["cold_start_rate"].max() * 1.15, 0.05)))
    ax.set_xlim(left=-0.03 * max(summary["idle_gpu_gb_s"].max(), 1.0))
    ax.set_title("Keep-alive trade-off: cold starts vs idle memory held")
    n = summary["requests"]
    style.legend_outside(fig, [ax], title="keep-alive policy",
                         notes=[f"n = {n.min()}–{n.max()} requests per point" if n.nunique() > 1
                                else f"n = {n.iloc[0]} requests per point"])
    keep = [c for c in ("policy", "scenario", "rps", "idle_gpu_gb_s", "cold_start_rate", "requests")
            if c in summary.columns]
    return style.save(fig, path, summary[keep])


def plot_serverless(run_dir: Path) -> list[Path]:
    """Every figure whose table the run dir holds: ``requests.parquet`` (CDF, breakdown), ``summary.csv``
    (P99 vs RPS when several rates were run)."""
    run_dir = Path(run_dir)
    requests = style.read_table(run_dir, "requests")
    requests = by_runtime(requests) if requests is not None else None
    summary = by_runtime(pd.read_csv(run_dir / "summary.csv"))
    out: list[Path] = []
    if "storage" in summary.columns and summary["storage"].nunique() > 1:
        out += p99_by_storage(summary, run_dir / "p99_by_storage")
        first = summary["storage"].iloc[0]  # the other figures: one storage setting (p99_by_storage compares them)
        summary = summary[summary["storage"] == first]
        if requests is not None and "storage" in requests.columns:
            requests = requests[requests["storage"] == first]
    if requests is not None and len(requests):
        out += latency_cdf(requests, run_dir / "latency_cdf")
    rps_rows = summary[summary["scenario"] == "rps"] if "scenario" in summary.columns else summary
    if "rps" in summary.columns and rps_rows["rps"].nunique() > 1:
        out += p99_vs_rps(summary, run_dir / "p99_vs_rps")
    if requests is not None and requests["cold_start"].any():
        out += cold_start_breakdown(requests, run_dir / "cold_start_breakdown")
    return out


# A real cold start's phases (``cold_starts.parquet``) under the loading experiment's names, so they share its colours
# and labels; ``t_other_s`` is the rest of the load call (RPCs, waiting for the process, the tier's bookkeeping).
REAL_PHASES = {"handoff_s": "t_handoff_s", "download_s": "t_download_s", "imports_s": "t_imports_s",
               "device_init_s": "t_device_init_s", "weights_s": "t_weights_s", "model_build_s": "t_model_build_s",
               "kv_alloc_s": "t_kv_alloc_s", "compile_s": "t_compile_s", "graph_capture_s": "t_graph_capture_s"}
TIER_ORDER = ("dram", "ssd", "remote")


def cold_start_phases(cold: pd.DataFrame, path: Path, setting: str) -> list[Path]:
    """Mean seconds of each phase of a real run's cold starts, stacked per policy (and runtime, when several ran),
    one panel per tier the weights came from (shared y): the hand-off and imports are what a runtime changes, the
    weights what the tier and loader change, the engine's set-up (KV cache, compile, graph capture) what
    ``engine=`` changes."""
    df = by_runtime(cold).copy()
    phases = [c for c in REAL_PHASES if c in df.columns]
    df[phases] = df[phases].fillna(0.0)
    df["other_s"] = (df["load_s"] - df[phases].sum(axis=1)).clip(lower=0)
    columns = [*phases, "other_s"]
    tiers = [t for t in TIER_ORDER if t in set(df["tier"])] + sorted(set(df["tier"]) - set(TIER_ORDER))
    policies = list(dict.fromkeys(df["policy"]))
    per_panel = max(2.4, 0.6 * len(policies) + 0.8)
    fig, axes = style.figure(1, len(tiers), width=3.8 + per_panel * len(tiers), height=3.6, sharey=True)
    frames = []
    for ax, tier in zip(axes[0], tiers, strict=True):
        part = df[df["tier"] == tier]
        means = part.groupby("policy")[columns].mean().reindex(policies)
        counts = part.groupby("policy").size().reindex(policies).fillna(0).astype(int)
        stacked_bars(ax, means, {c: REAL_PHASES.get(c, "t_other_s") for c in columns}, counts, totals=True)
        ax.set_title(f"weights from {tier}")
        frames.append(means.rename(columns={c: REAL_PHASES.get(c, "t_other_s") for c in columns})
                      .assign(n=counts, tier=tier).reset_index())
    axes[0][0].set_ylabel("mean time per cold start (s)")
    fig.suptitle(f"Cold-start phases, real run ({setting})")
    style.legend_outside(fig, axes[0], title="phase",
                         notes=["rows: every cold start of the run; n per bar",
                                "bars: means (they add up to the mean load call); no error bars on a stack"])
    return style.save(fig, path, pd.concat(frames, ignore_index=True))


def real_setting(run_dir: Path, summary: pd.DataFrame) -> str:
    """What every figure of a real serverless run shares: its runtime(s) and storage (the tiers of each server and
    where checkpoints start), from the run's own ``config.yaml`` and summary."""
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")) if (run_dir / "config.yaml").exists() else {}
    runtimes = list(dict.fromkeys(summary["runtime"].astype(str))) if "runtime" in summary.columns else []
    parts = [f"runtime{'s' if len(runtimes) > 1 else ''} {', '.join(runtimes)}"] if runtimes else []
    real = cfg.get("real") if isinstance(cfg, dict) else None
    if isinstance(real, dict) and "dram_gb" in real and "ssd_gb" in real:
        replicas = int(real.get("ssd_replicas", 0))
        parts.append(f"storage DRAM {float(real['dram_gb']):g} GB + SSD {float(real['ssd_gb']):g} GB per server, "
                     f"{replicas} SSD cop{'y' if replicas == 1 else 'ies'} per model, the rest remote")
    return "; ".join(parts) or "real run"


def plot_serverless_real(run_dir: Path) -> list[Path]:
    """A real run's figures (``experiment=serverless_real``): the latency CDF and the request breakdown titled with
    the run's runtime and storage, and the cold-start phases per runtime from ``cold_starts.parquet``."""
    run_dir = Path(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv")
    setting = real_setting(run_dir, summary)
    requests = style.read_table(run_dir, "requests")
    out: list[Path] = []
    if requests is not None and len(requests):
        requests = by_runtime(requests)
        out += latency_cdf(requests, run_dir / "latency_cdf", f"Time to first token, real run ({setting})")
        if requests["cold_start"].any():
            out += cold_start_breakdown(requests, run_dir / "cold_start_breakdown",
                                        f"Cold-start breakdown, real run ({setting})")
    cold = style.read_table(run_dir, "cold_starts")
    if cold is not None and len(cold) and "load_s" in cold.columns:
        out += cold_start_phases(cold, run_dir / "cold_start_phases", setting)
    return out


def plot_keepalive(run_dir: Path) -> list[Path]:
    """The keep-alive trade-off plus the generic figures."""
    summary = pd.read_csv(Path(run_dir) / "summary.csv")
    return [*plot_serverless(run_dir), *keepalive_tradeoff(summary, Path(run_dir) / "keepalive_tradeoff")]


def sim_vs_real_cdf(requests: pd.DataFrame, path: Path) -> list[Path]:
    """TTFT ECDFs of the real run and its calibrated simulation, one panel per policy (shared axes)."""
    policies = list(dict.fromkeys(requests["policy"]))
    fig, axes = style.figure(1, len(policies), width=1.8 + 3.0 * len(policies), height=3.2, sharex=True,
                             sharey=True)
    plotted = []
    for ax, policy in zip(axes[0], policies, strict=True):
        part = requests[requests["policy"] == policy]
        for mode, rows in part.groupby("mode", sort=False):
            reps = int(rows["replicate"].nunique()) if "replicate" in rows else 1
            _ecdf(ax, rows["ttft_s"], str(mode) if reps == 1 else f"{mode} ({reps} replicates pooled)")
            plotted.append({"policy": policy, "mode": mode, "replicates": reps, "n": len(rows),
                            **{f"ttft_s_p{q}": rows["ttft_s"].quantile(q / 100) for q in (50, 90, 99)}})
        counts = part.groupby("mode").size()
        ax.set_title(f"{policy} ({' / '.join(f'{m} n={c}' for m, c in counts.items())})", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel(f"{style.label('ttft_s')}, log")
    axes[0][0].set_ylabel("fraction of requests")
    fig.suptitle("Time to first token, real run vs its calibrated simulation (every request)")
    style.legend_outside(fig, axes[0], title="mode")
    return style.save(fig, path, pd.DataFrame(plotted))


def plot_sim_vs_real(run_dir: Path) -> list[Path]:
    """Both CDFs per policy (``experiment=sim_vs_real``)."""
    requests = style.read_table(Path(run_dir), "requests")
    return [] if requests is None else sim_vs_real_cdf(by_runtime(requests), Path(run_dir) / "sim_vs_real_cdf")


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


def regime_map(table: pd.DataFrame, path: Path, pays_at: float = 1.27) -> list[Path]:
    """Heat maps of the median P99 ratio over (set / DRAM) × (set / SSD): one row per baseline, one column per
    (RPS, SSD replicas). Cells at or above ``pays_at`` are boxed; cells below 1 are hatched."""
    panels = table[["rps", "ssd_replicas"]].drop_duplicates().sort_values(["rps", "ssd_replicas"]).values.tolist()
    policies = sorted(table["policy"].unique())
    fig, axes = style.figure(len(policies), len(panels), width=3.6 * len(panels), height=3.2 * len(policies))
    for i, policy in enumerate(policies):
        for j, (rps, rep) in enumerate(panels):
            ax = axes[i][j]
            d = table[(table["policy"] == policy) & (table["rps"] == rps) & (table["ssd_replicas"] == rep)]
            grid = d.pivot(index="set_over_ssd", columns="set_over_dram", values="p99_ratio").sort_index(
                ascending=False)
            img = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu_r", norm=TwoSlopeNorm(1.0, 0.5, 2.5),
                            aspect="auto")
            for yi in range(grid.shape[0]):
                for xi in range(grid.shape[1]):
                    ax.text(xi, yi, f"{grid.iat[yi, xi]:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
            ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
            for (yi, y), (xi, x) in ((a, b) for a in enumerate(grid.index) for b in enumerate(grid.columns)):
                v = grid.loc[y, x]
                if v >= pays_at:
                    ax.add_patch(Rectangle((xi - 0.5, yi - 0.5), 1, 1, fill=False, lw=2, ec="black"))
                elif v < 1:
                    ax.add_patch(Rectangle((xi - 0.5, yi - 0.5), 1, 1, fill=False, hatch="//", lw=0, ec="gray"))
            ax.set_title(f"{policy} / serverlessllm, {rps:g} RPS, {rep:g} SSD replica(s)", fontsize=8)
            ax.set_xlabel("checkpoint set / server DRAM")
            ax.set_ylabel("checkpoint set / server SSD")
            ax.grid(False)
    fig.colorbar(img, ax=axes, shrink=0.8, label="P99 TTFT ratio (baseline / serverlessllm)")
    fig.suptitle(f"P99 TTFT ratio, median over seeds (box: >= {pays_at}; hatched: < 1); equal storage", fontsize=9)
    return style.save(fig, path, table)


def plot_regime(run_dir: Path) -> list[Path]:
    """The regime map and its table (``regime.csv``), from the run's ``summary.csv``."""
    run_dir = Path(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv")
    table = regime_table(summary)
    table.to_csv(run_dir / "regime.csv", index=False)
    config = run_dir / "config.yaml"
    pays_at = OmegaConf.load(config).experiment.get("pays_at", 1.27) if config.exists() else 1.27
    return regime_map(table, run_dir / "regime_map", float(pays_at))
