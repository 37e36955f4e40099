"""The figure style: fixed colours per name, labels with units, IQR bars, PNG + PDF + the plotted rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from experiments import style


def test_a_name_keeps_its_colour_and_unknown_names_are_stable_across_processes() -> None:
    assert style.color("native") == style.PALETTE["native"]
    assert style.color("petals") != style.color("cg_bp+ws_rr")
    assert style.color("fixed_60s") != style.color("fixed_600s")  # keep-alive lengths get their own shade
    code = "from experiments import style; print(style.color('some_new_loader'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[2]).stdout.strip()
    assert other == style.color("some_new_loader")
    assert other in style.FALLBACK


@pytest.mark.parametrize(("column", "expected"), [
    ("queue_s", "loading-queue wait (s)"), ("ttft_s_p99", "P99 time to first token (s)"),
    ("load_s_median", "median load time (s)"), ("allocation_delays", "allocation delays"),
    ("foo_bar_gbps", "foo bar (GB/s)")])
def test_labels_say_the_unit_and_never_show_a_raw_column(column: str, expected: str) -> None:
    assert style.label(column) == expected


def test_spread_prefers_exact_quartiles_of_the_trials_then_the_summary_iqr() -> None:
    rows = pd.DataFrame({"loader": ["a", "b"], "load_s_median": [2.0, 10.0], "load_s_iqr": [2.0, 4.0],
                         "load_s_min": [1.5, 7.0], "load_s_max": [4.0, 20.0]})
    trials = pd.DataFrame({"loader": ["a"] * 5 + ["b"] * 5, "ok": True,
                           "load_s": [1, 2, 2, 3, 4, 8, 9, 10, 12, 20]})
    lo, hi, note = style.spread(rows, "load_s", ["loader"], trials)
    assert (list(lo), list(hi)) == ([2.0, 9.0], [3.0, 12.0])
    assert "trials" in note
    lo, hi, note = style.spread(rows, "load_s", ["loader"], None, center="load_s_median")
    assert (list(lo), list(hi)) == ([1.5, 8.0], [3.0, 12.0])  # cut at min, centred otherwise
    assert "no quartiles" in note


def test_bars_plot_exactly_the_rows_and_save_writes_png_pdf_and_the_rows(tmp_path: Path) -> None:
    rows = pd.DataFrame({"x": ["p", "p", "q"], "h": ["native", "torch", "native"], "y": [1.0, 2.0, 3.0],
                         "n": [5, 5, 0]})
    fig, axes = style.figure()
    plotted = style.bars(axes[0][0], rows, "x", "h", "y", n="n")
    heights = sorted(p.get_height() for p in axes[0][0].patches)
    assert heights == [1.0, 2.0]  # the n = 0 cell is marked n/a, not drawn
    assert plotted["y"].tolist() == [1.0, 2.0]
    out = style.save(fig, tmp_path / "fig", plotted)
    assert [p.name for p in out] == ["fig.png", "fig.pdf"]
    assert all(p.stat().st_size > 1000 for p in out)
    assert pd.read_csv(tmp_path / "fig.plotted.csv")["y"].tolist() == [1.0, 2.0]
    assert not plt.get_fignums()  # closed
