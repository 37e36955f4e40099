"""``sllm_comparison.csv``: our measured loaders beside sllm-store's published results (speedups, ceiling fractions).

Our side: per run and cell (model, dtype, device, cache state), each loader's median load time, its speedup over
the safetensors and torch baselines measured in the same run, and its median throughput as a fraction of the
ceiling that bounds it (measured in the same run). sllm-store's side: the same quantities computed from its
published times (``experiments.loading.sllm_reference``), its bytes from the zoo's exact count for the architecture.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.loading.sllm_reference import SLLM_STORE_RESULTS, PublishedLoad
from harness.config import instantiate_option

BASELINES = {"speedup_vs_safetensors": "safetensors", "speedup_vs_torch": "torch"}
CELL = ["model", "dtype", "device", "cache_state"]
COLUMNS = ["source", "run", "hardware", "model", "dtype", "device", "cache_state", "loader", "n", "load_s", "bytes",
           "throughput_gbps", "speedup_vs_safetensors", "speedup_vs_torch", "speedup_basis", "ceiling_name",
           "ceiling_gbps", "ceiling_fraction", "note"]


def zoo_bytes(model: str, dtype: str) -> int:
    """Checkpoint bytes of a ``conf/model`` architecture at a dtype (the zoo's exact count, meta device)."""
    return int(instantiate_option("model", model).checkpoint_bytes(dtype))


def run_hardware(run: str | Path) -> str:
    """A one-line description of the machine a run measured on (from its environment.json), or ''."""
    path = Path(run) / "environment.json"
    if not path.exists():
        return ""
    env: dict[str, Any] = json.loads(path.read_text())
    parts = [f"{env.get('cpu_model', '?')} ({env.get('cpu_count', '?')} CPUs)"]
    if env.get("gpu"):
        parts.append(str(env["gpu"].get("name")))
    disk = env.get("disk") or {}
    if disk.get("device"):
        parts.append(f"disk {disk['device']} ({disk.get('fstype')})")
    return ", ".join(parts)


def measured_rows(trials: pd.DataFrame, hardware: Callable[[str], str] = run_hardware) -> pd.DataFrame:
    """One row per (run, cell, loader) with ok trials: medians, same-run speedups, fraction of the ceiling."""
    if "run" not in trials:
        trials = trials.assign(run="")
    ok = trials[trials["ok"].astype(bool)]
    if ok.empty:
        return pd.DataFrame(columns=COLUMNS)
    med = (ok.groupby(["run", *CELL, "loader"], dropna=False)
           .agg(n=("load_s", "size"), load_s=("load_s", "median"), bytes=("bytes", "first"),
                throughput_gbps=("throughput_gbps", "median"), ceiling_name=("ceiling_name", "first"),
                ceiling_gbps=("ceiling_gbps", "median"), ceiling_fraction=("ceiling_fraction", "median"))
           .reset_index())
    for column, baseline in BASELINES.items():
        base = med[med["loader"] == baseline][["run", *CELL, "load_s"]].rename(columns={"load_s": "base_s"})
        med = med.merge(base, on=["run", *CELL], how="left")
        med[column] = med["base_s"] / med["load_s"]
        med = med.drop(columns="base_s")
    med["source"] = "measured"
    med["speedup_basis"] = "same run, median load_s"
    med["hardware"] = [hardware(r) if r else "" for r in med["run"]]
    med["note"] = ""
    return med.reindex(columns=COLUMNS)


def reference_rows(results: tuple[PublishedLoad, ...] = SLLM_STORE_RESULTS,
                   bytes_of: Callable[[str, str], int] | None = None) -> pd.DataFrame:
    """sllm-store's published results with throughput, speedups and ceiling fraction computed from them."""
    bytes_of = bytes_of or zoo_bytes
    rows = []
    for r in results:
        size = bytes_of(r.model, r.dtype) if r.load_s else None
        throughput = size / r.load_s / 1e9 if size and r.load_s else np.nan
        from_times = r.load_s is not None and r.safetensors_load_s is not None
        rows.append({
            "source": r.source, "run": "", "hardware": r.hardware, "model": r.model, "dtype": r.dtype,
            "device": "cuda", "cache_state": r.cache_state, "loader": "sllm-store", "n": np.nan,
            "load_s": r.load_s if r.load_s is not None else np.nan, "bytes": size if size else np.nan,
            "throughput_gbps": throughput,
            "speedup_vs_safetensors": _speedup(r.safetensors_load_s, r.load_s, r.published_speedup_vs_safetensors),
            "speedup_vs_torch": _speedup(r.torch_load_s, r.load_s, r.published_speedup_vs_torch),
            "speedup_basis": "published times" if from_times else "published speedup",
            "ceiling_name": r.ceiling_name, "ceiling_gbps": r.ceiling_gbps if r.ceiling_gbps else np.nan,
            "ceiling_fraction": throughput / r.ceiling_gbps if r.ceiling_gbps else np.nan, "note": r.note})
    return pd.DataFrame(rows, columns=COLUMNS)


def _speedup(baseline_s: float | None, load_s: float | None, published: float | None) -> float:
    if baseline_s is not None and load_s:
        return baseline_s / load_s
    return published if published is not None else np.nan


def sllm_comparison(trials: pd.DataFrame, hardware: Callable[[str], str] = run_hardware,
                    bytes_of: Callable[[str, str], int] | None = None) -> pd.DataFrame:
    """Measured rows and sllm-store's published rows in one table, grouped by cache state (measured first)."""
    frames = [measured_rows(trials, hardware), reference_rows(bytes_of=bytes_of)]
    table = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    table["_measured"] = table["source"] != "measured"
    table = table.sort_values(["cache_state", "_measured", "model", "run", "load_s"], kind="stable")
    return table.drop(columns="_measured").reset_index(drop=True)
