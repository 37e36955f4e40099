"""The simulator's tables on the golden scenarios equal the pinned ones (``tests/schedulers/golden.py`` says how
they were made and how to regenerate them on purpose)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.schedulers.golden import SCENARIOS, as_written, read_golden, run, trace


@pytest.fixture(scope="module")
def golden() -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_golden()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_tables_equal_the_golden_files(scenario: object, golden: tuple[pd.DataFrame, pd.DataFrame]
                                                ) -> None:
    requests, summary = golden
    df, row = run(scenario, trace())  # type: ignore[arg-type]
    want = requests[requests["scenario"] == scenario.name].reset_index(drop=True)  # type: ignore[attr-defined]
    assert len(want), f"no golden rows for {scenario.name}: regenerate with python -m tests.schedulers.golden --write"
    pd.testing.assert_frame_equal(as_written(df), want, check_exact=True)
    want_row = summary[summary["scenario"] == scenario.name].reset_index(drop=True)  # type: ignore[attr-defined]
    pd.testing.assert_frame_equal(as_written(pd.DataFrame([row])), want_row, check_exact=True)


def test_the_golden_scenarios_exercise_every_lifecycle_path(golden: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """The pinned trace is only a guard where it reaches the paths: migrations (done and aborted), preemptions,
    timeouts, tier upgrades (a load reading a faster tier than decided), every tier, warm hits, pool waits."""
    requests, summary = golden
    by = summary.set_index("scenario")
    assert by.loc["sllm-hybrid", "migrations"] > 0
    assert by["migrations_aborted"].sum() > 0
    assert by.loc["shepherd-fixed", "preemptions"] > 0
    assert by["timeouts"].sum() > 0
    assert by.loc["sllm-pool-slots", "pool_wait_s"] > 0
    assert (requests["tier_loaded"] != requests["tier_decided"]).any()
    assert {"gpu", "dram", "ssd", "remote"} <= set(requests["tier_loaded"])
    assert by.loc["sllm-hybrid", "gpu_seconds"] != by.loc["sllm-fixed", "gpu_seconds"]  # the hybrid pre-warmed
