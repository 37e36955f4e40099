"""Figures of the loading suite, drawn from committed-style tables (no run needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from experiments.loading.suite_plots import plot_dtype_coldstart, plot_per_model

REFERENCE = Path(__file__).parents[3] / "results" / "reference"


def _summary(run_dir: Path) -> pd.DataFrame:
    rows = []
    for dtype, size in (("fp32", 4e8), ("fp16", 2e8)):
        for loader in ("native", "safetensors"):
            for state, cold_start in (("cold", 13.77), ("warm", 11.09)):
                load = size / 1e9 * (4 if state == "cold" else 0.5)
                rows.append({"model": "m", "dtype": dtype, "device": "cpu", "loader": loader, "cache_state": state,
                             "n": 3, "bytes": size, "load_s_median": load, "load_s_iqr": 0.1 * load,
                             "load_s_min": 0.9 * load, "load_s_max": 1.2 * load, "ceiling_gbps_median": 2.0,
                             "cold_start_s_median": cold_start + (1 if loader == "native" else 0)
                             + (0.5 if dtype == "fp16" else 0)})
    summary = pd.DataFrame(rows)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(run_dir / "summary.csv", index=False)
    return summary


def _cold_medians(summary: pd.DataFrame) -> dict[tuple[str, str], float]:
    cold = summary[summary["cache_state"] == "cold"]
    return {(r.dtype, r.loader): r.cold_start_s_median for r in cold.itertuples()}


def test_dtype_figure_plots_the_cold_medians_not_an_average_of_cache_states(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    figures = plot_dtype_coldstart(tmp_path)
    assert [p.name for p in figures] == ["dtype_coldstart.png", "dtype_coldstart.pdf"]
    plotted = pd.read_csv(tmp_path / "dtype_coldstart.plotted.csv")
    cold = plotted[(plotted["column"] == "cold_start_s_median") & (plotted["cache_state"] == "cold")]
    assert {(r.dtype, r.loader): r.value for r in cold.itertuples()} == pytest.approx(_cold_medians(summary))
    # native fp32: 14.77 cold, 12.09 warm; the old figure drew their mean 13.43 as "median cold start"
    assert 13.43 not in set(plotted["value"].round(2))


def test_dtype_figure_on_the_committed_reference_table(tmp_path: Path) -> None:
    summary = pd.read_csv(REFERENCE / "dtype_coldstart_cpu" / "summary.csv")
    summary.to_csv(tmp_path / "summary.csv", index=False)
    plot_dtype_coldstart(tmp_path)
    plotted = pd.read_csv(tmp_path / "dtype_coldstart.plotted.csv")
    cold = plotted[(plotted["column"] == "cold_start_s_median") & (plotted["cache_state"] == "cold")]
    assert {(r.dtype, r.loader): r.value for r in cold.itertuples()} == pytest.approx(_cold_medians(summary))
    assert len(cold) == 8  # 4 dtypes × 2 loaders, one bar per summary row


def test_per_model_draws_one_bar_per_summary_row_per_cache_state(tmp_path: Path) -> None:
    _summary(tmp_path)
    figures = plot_per_model(tmp_path)
    assert {p.suffix for p in figures} == {".png", ".pdf"}
    plotted = pd.read_csv(tmp_path / "sllm_loading.plotted.csv")
    assert set(plotted["cache_state"]) == {"cold", "warm"}
    assert len(plotted) == 8
