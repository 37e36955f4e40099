"""Metric names of the loading experiment and how trials are summarized (one place for both)."""

from __future__ import annotations

import numpy as np
import pandas as pd

CELL_KEYS = ["model", "dtype", "device", "loader", "cache_state", "runtime", "engine", "compile_cache"]
# The phases of a cold start in the order they run; consecutive marks, so they sum to ``cold_start_s``.
PHASES = ["t_handoff_s", "t_imports_s", "t_device_init_s", "t_weights_s", "t_model_build_s", "t_kv_alloc_s",
          "t_compile_s", "t_graph_capture_s", "t_first_token_s"]
# Per-cell facts carried into the summary as they are (where the weights come from, the prompt and its first token).
DESCRIPTIVE = ["model_source", "model_path", "source_dtype", "cast", "prompt_text", "first_token_text",
               "compile_cache_status"]
MEDIAN_COLUMNS = ["throughput_gbps", "ceiling_gbps", "ceiling_fraction", "disk_read_fraction", "cold_start_s",
                  "resident_fraction", *PHASES, "loader_alloc_s", "loader_fault_s", "tpot_s"]
# labels a cell's trials carry: which ceiling its fraction is against (and into which memory), how the native loader
# read (its path and whether a probe chose it); a cell whose trials differ shows every value, joined by "|"
LABEL_COLUMNS = ["ceiling_name", "ceiling_memory", "loader_path", "loader_path_source"]


def _iqr(s: pd.Series) -> float:
    return float(s.quantile(0.75) - s.quantile(0.25)) if len(s) else np.nan


def summarize_trials(trials: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """One row per cell: n ok, n failed, status, median/IQR/min/max of load time, medians of the rest."""
    keys = [k for k in (keys or CELL_KEYS) if k in trials]
    rows = []
    for cell, group in trials.groupby(keys, dropna=False, sort=True):
        ok = group[group["ok"].astype(bool)]
        statuses = set(group["status"])
        status = "ok" if statuses == {"ok"} else "unavailable" if statuses == {"unavailable"} else \
            "failed" if ok.empty else "partial"
        row = dict(zip(keys, cell if isinstance(cell, tuple) else (cell,), strict=True))
        errors = group.loc[~group["ok"].astype(bool), "error"]
        row.update({"n": len(ok), "n_failed": int((~group["ok"].astype(bool)).sum()), "status": status,
                    "error": errors.iloc[0] if len(errors) else "",
                    "bytes": ok["bytes"].iloc[0] if len(ok) else np.nan,
                    "load_s_median": ok["load_s"].median(), "load_s_iqr": _iqr(ok["load_s"]),
                    "load_s_min": ok["load_s"].min(), "load_s_max": ok["load_s"].max()})
        for col in MEDIAN_COLUMNS:
            row[f"{col}_median"] = ok[col].median() if col in ok else np.nan
        for col in DESCRIPTIVE:
            if col in group:
                values = (ok if col == "first_token_text" else group)[col].dropna()
                row[col] = values.mode().iloc[0] if len(values) else ""
        if "compile_cache_status" in ok:  # warm starts whose artifact was refused and rebuilt (the run says so)
            row["compile_cache_rebuilt"] = int(ok["compile_cache_status"].astype(str).str.startswith("rebuilt").sum())
        if "tier" in ok and len(ok):
            row["tier"] = ok["tier"].mode().iloc[0]
        for col in LABEL_COLUMNS:
            if col in ok:
                row[col] = "|".join(sorted({str(v) for v in ok[col].dropna()}))
        for col in sorted(str(c) for c in group.columns if str(c).startswith("bytes_")):
            row[f"{col}_median"] = ok[col].median() if len(ok) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
