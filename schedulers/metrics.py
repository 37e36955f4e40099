"""Metric names in one place: the per-request columns and the per-policy summary, and how the summary is
computed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# requests.parquet: one row per request (docs/serverless.md explains each column).
REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id",
    "model",
    "arrival_s",
    "input_tokens",
    "output_tokens",
    "server",
    "tier_decided",
    "tier_loaded",
    "queue_s",
    "load_s",
    "migration_s",
    "ttft_s",
    "e2e_s",
    "timed_out",
    "cold_start",
    "migrated",
    "preempted",
)
REQUEST_DTYPES: dict[str, str] = {
    "request_id": "int64",
    "model": "str",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "server": "int64",
    "tier_decided": "str",
    "tier_loaded": "str",
    "timed_out": "bool",
    "cold_start": "bool",
    "migrated": "int64",
    "preempted": "int64",
}
# summary.csv: one row per policy (and scenario).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "requests",
    "ttft_s_p50",
    "ttft_s_p99",
    "e2e_s_mean",
    "e2e_s_p99",
    "cold_start_rate",
    "migrations",
    "timeouts",
    "gpu_seconds",
    "idle_gpu_gb_s",
    "preemptions",
    "loads",
    "events",
    "wall_s",
)
STAT_COLUMNS = ("migrations", "gpu_seconds", "idle_gpu_gb_s", "preemptions", "loads", "events")


def summarize(requests: pd.DataFrame, stats: Mapping[str, float], wall_s: float = 0.0) -> dict[str, float]:
    """One summary row from a run's requests and its simulator totals (timed-out requests count at the
    timeout)."""
    ttft = requests["ttft_s"].to_numpy(dtype=float)
    e2e = requests["e2e_s"].to_numpy(dtype=float)
    empty = len(requests) == 0
    row: dict[str, float] = {
        "requests": len(requests),
        "ttft_s_p50": float("nan") if empty else float(np.percentile(ttft, 50)),
        "ttft_s_p99": float("nan") if empty else float(np.percentile(ttft, 99)),
        "e2e_s_mean": float("nan") if empty else float(e2e.mean()),
        "e2e_s_p99": float("nan") if empty else float(np.percentile(e2e, 99)),
        "cold_start_rate": float("nan") if empty else float(requests["cold_start"].mean()),
        "timeouts": int(requests["timed_out"].sum()),
        "wall_s": wall_s,
    }
    for key in STAT_COLUMNS:
        row[key] = float(stats.get(key, 0.0))
    return row


def summary_frame(rows: Sequence[Mapping[str, object]], keys: Sequence[str]) -> pd.DataFrame:
    """A summary table: the scenario ``keys`` first, then ``SUMMARY_COLUMNS`` in their fixed order."""
    df = pd.DataFrame(list(rows))
    return df[[*keys, *[c for c in SUMMARY_COLUMNS if c in df.columns]]]
