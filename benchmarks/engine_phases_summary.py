"""The engine tier's CPU targets from the run directories of ``benchmarks/engine_phases_cpu.sh`` (ratios of medians
of the same run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

PHASES = ["t_handoff_s", "t_imports_s", "t_device_init_s", "t_weights_s", "t_model_build_s", "t_kv_alloc_s",
          "t_compile_s", "t_graph_capture_s", "t_first_token_s", "cold_start_s", "tpot_s"]
KEYS = ["model", "dtype", "cache_state", "loader", "runtime", "engine", "compile_cache"]


def _ok(run: Path) -> pd.DataFrame:
    t = pd.read_parquet(run / "trials.parquet")
    return t[t["ok"].astype(bool)]


def medians(run: Path) -> pd.DataFrame:
    t = _ok(run)
    med = t.groupby(KEYS)[PHASES].median()
    med["n"] = t.groupby(KEYS).size()
    print(f"\n## {run.name}: medians (s)")
    print(med.round(4).to_string())
    return med


def compile_cache(run: Path) -> None:
    """Target 1: warm compile ≤ 0.3 × cold; compiled first tokens equal eager's; tpot compiled vs eager."""
    t = _ok(run)
    medians(run)
    compiled = t[t["engine"] == "compiled"]
    cold = compiled[compiled["compile_cache"] == "cold"]["t_compile_s"].median()
    warm = compiled[compiled["compile_cache"] == "warm"]["t_compile_s"].median()
    print(f"compile phase: cold {cold:.3f} s, warm {warm:.3f} s -> warm / cold = {warm / cold:.3f} (target <= 0.3)")
    statuses = compiled.groupby("compile_cache")["compile_cache_status"].agg(lambda s: sorted(set(s)))
    print(f"compile-cache status per cell: {statuses.to_dict()}")
    eager = t[t["engine"] == "eager"]
    if eager.empty:  # a run of the compiled engine alone (another of its knobs)
        return
    same = set(compiled["first_token_id"]) == set(eager["first_token_id"]) and t["first_token_id"].nunique() == 1
    print(f"first token of every compiled start equals eager's: {same} ({sorted(set(t['first_token_id']))})")
    te, tc = eager["tpot_s"].median(), compiled["tpot_s"].median()
    print(f"tpot_s over {int(t['decode_tokens'].iloc[0])} tokens: eager {te * 1e3:.2f} ms, compiled {tc * 1e3:.2f} ms "
          f"-> compiled / eager = {tc / te:.3f}")


def pool(run: Path) -> None:
    """Targets 2 and 3: with a prepared engine, spawn → first token ≤ 1.5 × the weights phase."""
    t = _ok(run)
    medians(run)
    for (model, dtype, state), g in t.groupby(["model", "dtype", "cache_state"]):
        cs, w = g["cold_start_s"].median(), g["t_weights_s"].median()
        ratios = (g["cold_start_s"] / g["t_weights_s"]).median()
        swap = bool((g["swap_verified_bytes"] > 0).all()) if "swap_verified_bytes" in g else "not recorded"
        mode = sorted(set(g["swap_mode"])) if "swap_mode" in g else "not recorded"
        print(f"{model} {dtype} {state}: cold start {cs:.3f} s, weights {w:.3f} s -> ratio of medians "
              f"{cs / w:.3f}, median of per-trial ratios {ratios:.3f} (target <= 1.5); prepared in every trial: "
              f"{bool(g['engine_prepared'].all())}; swap verified: {swap}; swap mode: {mode}")


def main() -> None:
    out = Path(sys.argv[1])
    for run in sorted(p for p in out.iterdir() if (p / "trials.parquet").exists()):
        (compile_cache if run.name.startswith("compile_cache") else pool)(run)


if __name__ == "__main__":
    main()
