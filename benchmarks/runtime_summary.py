"""The runtime tier's targets from the run directories of ``benchmarks/runtime_cpu.sh`` (ratios of the same run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

PHASES = ["t_handoff_s", "t_imports_s", "t_device_init_s", "t_weights_s", "t_model_build_s", "t_first_token_s",
          "cold_start_s"]


def loading(run: Path) -> None:
    t = pd.read_parquet(run / "trials.parquet")
    t = t[t["ok"].astype(bool)]
    med = t.groupby(["model", "cache_state", "loader", "runtime"])[PHASES].median()
    med["weights_share"] = med["t_weights_s"] / med["cold_start_s"]
    print(f"\n## {run.name}: medians (s), n = {t.groupby(['loader', 'runtime']).size().min()} trials per cell")
    print(med.round(4).to_string())
    for key, g in med.groupby(level=[0, 1, 2]):
        fresh = g.xs("fresh", level=3)["cold_start_s"].iloc[0] if "fresh" in g.index.get_level_values(3) else None
        for rt in g.index.get_level_values(3):
            row = g.xs(rt, level=3).iloc[0]
            ratio = f"{row.cold_start_s / fresh:.3f} x fresh" if fresh else ""
            print(f"{' '.join(key)} {rt}: cold start {row.cold_start_s:.3f} s {ratio}; weights share "
                  f"{row.weights_share:.3f}")
    same = t.groupby(["loader"])["first_token_id"].nunique().max() == 1
    print(f"first token equal across runtimes for every loader: {same}; every tensor verified: "
          f"{bool((t['verified_bytes'] == t['bytes']).all())}")


def serverless(run: Path) -> None:
    s = pd.read_csv(run / "summary.csv")
    print(f"\n## {run.name}")
    print(s[[c for c in ("policy", "runtime", "mode", "requests", "ttft_s_p50", "ttft_s_p99", "cold_start_rate",
                         "timeouts") if c in s.columns]].to_string(index=False))
    if "mode" not in s.columns and set(s["runtime"]) >= {"fresh", "pool"}:
        for policy, g in s.groupby("policy"):
            p50 = g.set_index("runtime")["ttft_s_p50"]
            print(f"{policy}: median TTFT pool / fresh = {p50['pool'] / p50['fresh']:.3f}")
    errors = run / "errors.parquet"
    if errors.exists():
        e = pd.read_parquet(errors)
        print(e.pivot_table(index=["policy", "runtime"], columns="metric", values="rel_error").round(3).to_string())


def main() -> None:
    out = Path(sys.argv[1])
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        if (run / "trials.parquet").exists():
            loading(run)
        elif (run / "summary.csv").exists():
            serverless(run)


if __name__ == "__main__":
    main()
