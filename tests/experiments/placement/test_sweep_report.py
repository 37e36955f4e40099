"""Sweep report: gathers per-job summaries of a multirun, guesses the swept axis, plots Figs 7–10."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from experiments.placement.sweep_report import collect, guess_axis, main, plot_sweep


def _job(root: Path, name: str, num_servers: int, per_token: dict[str, float]) -> None:
    job = root / name
    job.mkdir(parents=True)
    rows = [{"policy": p, "scenario": "abvt", "num_servers": num_servers, "a100_share": 0.2,
             "arrival_rate_per_s": 0.5, "max_tokens": 128, "design_concurrency": 30, "per_token_s_mean": v}
            for p, v in per_token.items()]
    pd.DataFrame(rows).to_csv(job / "summary.csv", index=False)


def test_collects_jobs_guesses_the_axis_and_plots(tmp_path: Path) -> None:
    _job(tmp_path, "0_bprr.num_servers=10", 10, {"petals": 1.2, "cg_bp+ws_rr": 0.5})
    _job(tmp_path, "1_bprr.num_servers=20", 20, {"petals": 1.1, "cg_bp+ws_rr": 0.45})
    (tmp_path / "other").mkdir()
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "other" / "summary.csv", index=False)  # not a placement run
    summary = collect([tmp_path])
    assert len(summary) == 4
    assert set(summary["job"]) == {"0_bprr.num_servers=10", "1_bprr.num_servers=20"}
    assert guess_axis(summary) == "num_servers"
    figures = plot_sweep(summary, "num_servers", tmp_path)
    assert [p.name for p in figures] == ["sweep_num_servers.png", "sweep_num_servers.pdf"]
    assert all(p.exists() for p in figures)
    plotted = pd.read_csv(tmp_path / "sweep_num_servers.plotted.csv")  # one point per policy and C, as summarized
    assert plotted.set_index(["policy", "num_servers"])["per_token_s_mean"].to_dict() == {
        ("petals", 10): 1.2, ("cg_bp+ws_rr", 10): 0.5, ("petals", 20): 1.1, ("cg_bp+ws_rr", 20): 0.45}
    assert main([str(tmp_path)]) == 0
    written = pd.read_csv(tmp_path / "sweep_summary.csv")
    assert list(written["num_servers"]) == [10, 20, 10, 20]


def test_nothing_swept_or_nothing_found_is_reported(tmp_path: Path) -> None:
    _job(tmp_path, "0", 10, {"petals": 1.2})
    with pytest.raises(ValueError, match="no swept axis"):
        guess_axis(collect([tmp_path]))
    with pytest.raises(ValueError, match="axis/metric='bogus'"):
        plot_sweep(collect([tmp_path]), "bogus", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no placement summary\.csv"):
        collect([empty])
    assert main([str(tmp_path / "nowhere")]) == 2
