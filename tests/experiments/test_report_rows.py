"""What a report plots: never rows of different cells pooled, replicates aggregated with n and spread from them, axes
labelled with the rows' own values, incomplete runs refused or kept apart, its own folder; ``compare A B``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from experiments import report
from tests.experiments.runfolders import write_run

LOADING_CELLS = ["model", "dtype", "device", "loader", "cache_state", "runtime"]
SERVERLESS_CELLS = ["policy", "storage", "scenario", "tokens", "rps", "cv"]


def _loading_config(**over: Any) -> dict[str, Any]:
    cfg = {"experiment": {"name": "loading", "cells": LOADING_CELLS,
                          "objective": {"column": "load_s_median", "where": {"loader": "native"}}},
           "model": {"name": "tiny-opt"}, "dtype": "fp16", "device": "cpu", "loaders": ["native"],
           "runtimes": ["fresh", "pool"], "cache_states": ["cold", "warm"], "trials": 3, "seed": 0}
    cfg.update(over)
    return cfg


def _trials(load_s: dict[tuple[str, str], list[float]], loader: str = "native") -> pd.DataFrame:
    rows = []
    for (state, runtime), values in load_s.items():
        for t, v in enumerate(values):
            rows.append({"model": "tiny-opt", "dtype": "fp16", "device": "cpu", "loader": loader, "format": "native",
                         "cache_state": state, "runtime": runtime, "trial": t, "ok": True, "status": "ok",
                         "error": "", "bytes": 1e6, "load_s": v, "cold_start_s": v + 1})
    return pd.DataFrame(rows)


COLD_WARM = {("cold", "fresh"): [0.08, 0.09, 0.10], ("warm", "fresh"): [0.008, 0.009, 0.010],
             ("cold", "pool"): [0.07, 0.08, 0.09], ("warm", "pool"): [0.006, 0.007, 0.008]}


def test_two_loading_runs_never_pool_cache_states_and_label_rows_by_their_runtime(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", _loading_config(), _trials(COLD_WARM))
    b = write_run(tmp_path / "b", _loading_config(**{"loader_args": {"native": {"threads": 8}}}),
             _trials({k: [v * 0.5 for v in vs] for k, vs in COLD_WARM.items()}))
    out = tmp_path / "rep"
    table = report.write_report([a, b], out)
    assert len(table) == 8  # 2 runs × 2 states × 2 runtimes: one row each
    assert (table.n == 3).all()
    plotted = pd.read_csv(out / "report.plotted.csv")
    assert len(plotted) == 8
    threads = table["loader_args.native.threads"].map(lambda v: "unset" if pd.isna(v) else str(int(v)))
    assert set(plotted["loader_args.native.threads"].astype(str)) == {"unset", "8"}
    for _, row in plotted.iterrows():  # each bar is one cell's trials, never cold and warm together
        cell = table[(threads == str(row["loader_args.native.threads"]))
                     & (table.cache_state == row.cache_state) & (table.runtime == row.runtime)]
        assert len(cell) == 1
        assert row["load_s_median"] == pytest.approx(cell["load_s_median"].iloc[0])
    assert "runtimes" not in table.columns  # the list of runtimes is the rows' key `runtime`, never a bar label
    assert set(plotted.runtime) == {"fresh", "pool"}


def test_trials_give_the_whiskers_and_the_title_says_what_every_bar_shares(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / f"t{t}", _loading_config(**{"loader_args": {"native": {"threads": t}}},
                                                     cache_states=["warm"], runtimes=["fresh"]),
                 _trials({("warm", "fresh"): [0.01 * t, 0.012 * t, 0.02 * t]})) for t in (1, 2, 4)]
    out = tmp_path / "rep"
    table = report.write_report(runs, out)
    assert (table.n == 3).all()
    t2 = table[table["loader_args.native.threads"] == 2].iloc[0]
    assert t2.load_s_q25 == pytest.approx(np.quantile([0.02, 0.024, 0.04], 0.25))
    assert t2.load_s_q75 == pytest.approx(np.quantile([0.02, 0.024, 0.04], 0.75))
    rep = report.aggregate(runs)
    assert {"model": "tiny-opt", "cache_state": "warm", "loader": "native"}.items() <= rep.fixed.items()
    assert (out / "report.png").stat().st_size > 10_000


def _serverless(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"policy": p, "storage": s, "scenario": "rps", "tokens": "gsm8k", "rps": r, "cv": 8.0, "seed": seed,
             "requests": 100, "ttft_s_p99": float(rng.uniform(1, 2) * (1 + r) * (2 if s == "ssd_only" else 1))}
            for p in ("serverlessllm", "shepherd") for s in ("shared", "ssd_only") for r in (0.5, 1.4)]
    return pd.DataFrame(rows)


def _serverless_config(seed: int) -> dict[str, Any]:
    return {"experiment": {"name": "sllm_scheduler", "cells": SERVERLESS_CELLS,
                           "objective": {"column": "ttft_s_p99"}}, "seed": seed}


def test_a_seed_sweep_aggregates_the_seeds_of_each_cell(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / f"s{s}", _serverless_config(s), _serverless(s).drop(columns="seed"))
            for s in (0, 1, 2)]
    out = tmp_path / "rep"
    table = report.write_report(runs, out)
    assert len(table) == 8  # policy × storage × rate; the seeds are the replicates, not a key
    assert "seed" not in table.columns
    assert (table.n == 3).all()
    every = pd.concat([_serverless(s) for s in (0, 1, 2)])
    for _, row in table.iterrows():
        cell = every[(every.policy == row.policy) & (every.storage == row.storage) & (every.rps == row.rps)]
        assert row.ttft_s_p99_median == pytest.approx(cell.ttft_s_p99.median())
        assert row.ttft_s_p99_min == pytest.approx(cell.ttft_s_p99.min())
    plotted = pd.read_csv(out / "report.plotted.csv")
    assert len(plotted) == 8
    assert (plotted.n == 3).all()


def test_an_incomplete_run_is_refused_or_kept_apart(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", _loading_config(), _trials(COLD_WARM))
    b = write_run(tmp_path / "b", _loading_config(), _trials({("cold", "fresh"): [0.5]}), complete=False)
    with pytest.raises(report.ReportError, match=r"1 of 2 runs did not complete.*--allow-incomplete"):
        report.aggregate([a, b])
    assert report.main([str(a), str(b), "--out", str(tmp_path / "no")]) == 2
    kept = report.aggregate([a, b], allow_incomplete=True)
    assert "complete" in kept.keys
    cold_fresh = kept.table[(kept.table.cache_state == "cold") & (kept.table.runtime == "fresh")]
    assert sorted(cold_fresh.n) == [1, 3]  # the interrupted run's trial is its own row


def test_the_report_goes_to_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_run(tmp_path / "runs" / "a", _loading_config(), _trials(COLD_WARM))
    monkeypatch.setenv("COLDSTART_RESULTS", str(tmp_path / "results"))
    assert report.main([str(a)]) == 0
    assert not (a / "report").exists()
    (made,) = (tmp_path / "results" / "reports").iterdir()
    assert (made / "report.csv").exists()
    assert str(a.resolve()) in (made / "sources.txt").read_text()


def test_compare_pairs_the_same_cells_and_gives_ratios_with_intervals(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", _loading_config(), _trials(COLD_WARM))
    b = write_run(tmp_path / "b", _loading_config(**{"loader_args": {"native": {"threads": 8}}}),
             _trials({k: [v * 0.5 for v in vs] for k, vs in COLD_WARM.items() if k[0] == "cold"}))
    out = tmp_path / "cmp"
    assert report.main(["compare", str(a), str(b), "--out", str(out)]) == 0
    table = pd.read_csv(out / "compare.csv")
    assert len(table) == 2  # only the cells both runs have
    assert set(table.cache_state) == {"cold"}
    assert table.ratio_b_over_a.to_numpy() == pytest.approx([0.5, 0.5])
    assert (table.ratio_lo <= table.ratio_b_over_a).all()
    assert (table.ratio_b_over_a <= table.ratio_hi).all()
    assert (table.n_a == 3).all()
    assert (out / "compare.png").stat().st_size > 10_000
    _, _, between = report.compare(a, b)
    assert between == ["loader_args.native.threads"]


def test_compare_of_runs_with_nothing_in_common_is_an_error(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", _loading_config(), _trials(COLD_WARM))
    b = write_run(tmp_path / "b", _loading_config(), _trials({("hot", "fresh"): [0.1, 0.2]}))
    assert report.main(["compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 2

