"""Every placement experiment composes through Hydra and runs in smoke mode; same seed → same tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.placement.bprr import _fast_share
from harness.config import CONF_DIR, compose_config, instantiate_option, options
from harness.results import write_result

EXPERIMENTS = ["bprr_clustered", "bprr_scattered", "bprr_optimality", "placement"]
GROUPS = ["topology", "placement", "routing"]


def _compose(overrides: list[str]) -> DictConfig:
    return compose_config(overrides)


def _run(cfg: DictConfig, out: Path) -> dict[str, pd.DataFrame]:
    result = instantiate(cfg.experiment.run)(cfg, out)
    write_result(out, result)
    figures = instantiate(cfg.experiment.plot)(out)
    assert all(p.exists() for p in figures)
    return result.tables


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_instantiates_standalone(group: str) -> None:
    for name in options(group):
        obj = instantiate_option(group, name)
        stem = name.replace("_", "")
        module = type(obj).__module__.rsplit(".", 1)[1].replace("_", "")
        assert module == stem or group == "topology", f"{name} → {type(obj).__module__}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_file_is_a_delta_with_its_command(experiment: str) -> None:
    lines = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# coldstart experiment={experiment}")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_in_smoke_mode(tmp_path: Path, experiment: str) -> None:
    cfg = _compose([f"experiment={experiment}", "smoke=true"])
    tables = _run(cfg, tmp_path)  # how long it takes is the suite's --durations report, not a test (machine load)
    assert (tmp_path / "summary.csv").exists()
    if experiment != "bprr_optimality":
        requests = pd.read_parquet(tmp_path / "requests.parquet")
        for col in ("request_id", "client", "arrival_s", "path", "wait_s", "ttft_s", "per_token_s", "policy",
                    "scenario", "run"):
            assert col in requests.columns
        summary = pd.read_csv(tmp_path / "summary.csv")
        for col in ("policy", "placement", "routing", "scenario", "per_token_s_mean", "ttft_s_mean",
                    "wait_s_mean", "blocks_a100", "blocks_mig"):
            assert col in summary.columns
        assert (requests["per_token_s"] > 0).all()
    else:
        assert "instances" in tables


@pytest.mark.slow
def test_same_seed_same_tables_other_seed_other_arrivals(tmp_path: Path) -> None:
    a = _run(_compose(["experiment=bprr_clustered", "smoke=true", "seed=3"]), tmp_path / "a")
    b = _run(_compose(["experiment=bprr_clustered", "smoke=true", "seed=3"]), tmp_path / "b")
    c = _run(_compose(["experiment=bprr_clustered", "smoke=true", "seed=4"]), tmp_path / "c")
    pd.testing.assert_frame_equal(a["requests"], b["requests"])
    pd.testing.assert_frame_equal(a["summary"], b["summary"])
    assert not a["requests"]["arrival_s"].equals(c["requests"]["arrival_s"])


def test_table3_carries_the_papers_values(tmp_path: Path) -> None:
    tables = _run(_compose(["experiment=bprr_clustered", "smoke=true"]), tmp_path)
    row = tables["table3"].iloc[0]
    assert (row["paper_petals_per_token_s"], row["paper_proposed_per_token_s"]) == (6.28, 2.00)
    ratio = row["proposed_per_token_s"] / row["petals_per_token_s"]
    assert row["reduction_pct"] == pytest.approx(100 * (1 - ratio))


def test_sweep_point_a_policy_cannot_serve_is_a_failure_row_not_a_crash(tmp_path: Path) -> None:
    # 5 servers (1 A100, 4 MIG): PETALS covers 53 + 16 = 69 < 70 blocks and CG-BP is infeasible for |R|.
    cfg = _compose(["experiment=bprr_scattered", "smoke=true", "bprr.num_servers=5"])
    tables = _run(cfg, tmp_path)
    failures = pd.read_parquet(tmp_path / "failures.parquet")
    assert set(failures["policy"]) == {"petals", "cg_bp+ws_rr", "opt_order+ws_rr", "opt_num+ws_rr"}
    petals = failures[failures["policy"] == "petals"].iloc[0]
    assert petals["error_type"] == "NoRouteError"
    assert (petals["placement"], petals["routing"], petals["num_servers"]) == ("petals", "petals_dijkstra", 5)
    cg = failures[failures["policy"] == "cg_bp+ws_rr"].iloc[0]
    assert cg["error_type"] == "InfeasiblePlacementError"
    assert "block(s) short" in cg["error"]
    assert "GB" in cg["error"]
    assert tables["requests"].empty


def test_generic_experiment_names_the_policy_by_option_names(tmp_path: Path) -> None:
    cfg = _compose(["experiment=placement", "smoke=true", "placement=petals", "routing=shortest_path"])
    summary = _run(cfg, tmp_path)["summary"]
    assert list(summary["policy"]) == ["petals+shortest_path"]
    assert (summary["placement"].iloc[0], summary["routing"].iloc[0]) == ("petals", "shortest_path")


@pytest.mark.parametrize(("override", "key"), [
    ("bprr.monte_carlo_runs=0", "monte_carlo_runs"),
    ("bprr.num_requests=-3", "num_requests"),
    ("bprr.arrival_rates_per_s=[0.5,-1]", "arrival_rates_per_s"),
    ("bprr.max_tokens=[0]", "max_tokens"),
    ("bprr.design_concurrency=autox", "design_concurrency"),
    ("bprr.allocation_delay_petals_s=-1", "allocation_delay_petals_s"),
    ("bprr.client_clusters=[3]", "client_clusters"),
])
def test_bad_bprr_keys_are_named_before_anything_runs(tmp_path: Path, override: str,
                                                      key: str) -> None:
    cfg = _compose(["experiment=bprr_clustered", override])
    with pytest.raises(ValueError, match=rf"bprr\.{key}="):
        instantiate(cfg.experiment.run)(cfg, tmp_path)


def test_unknown_scattered_topology_names_the_options(tmp_path: Path) -> None:
    # The check fires before anything simulates (with smoke=true too: test_smoke_does_not_hide_...).
    cfg = _compose(["experiment=bprr_scattered", "bprr.topologies=[abvt,nowhere]"])
    with pytest.raises(ValueError, match=r"topology='nowhere' is not an option; choose one of .*gtsce"):
        instantiate(cfg.experiment.run)(cfg, tmp_path)


@pytest.mark.parametrize("topology", ["clustered", "gtsce"])
def test_user_defined_server_type_from_the_command_line(topology: str) -> None:
    h100 = "{h100: {mem_gb: 80, tau_s: 0.002, tau_in_slope_s: 5e-5, tau_in_base_s: 0.02}}"
    cfg = _compose(["experiment=placement", f"topology={topology}",
                              f"topology.extra_server_types={h100}", "topology.a100_type=h100"])
    topo = instantiate(cfg.topology)
    net = topo.build(np.random.default_rng(0))
    assert "h100" in {s.name for s in net.servers}
    assert "a100" not in {s.name for s in net.servers}
    # the results' a100_share counts the configured fast type, whatever its name
    share = sum(s.name == "h100" for s in net.servers) / len(net.servers)
    assert 0 < share < 1
    assert _fast_share(topo, net) == pytest.approx(share)


def test_cell_with_no_placement_even_for_one_request_fails_per_policy(tmp_path: Path) -> None:
    # 7 MIGs alone hold 28 of 70 blocks: the auto |R| rule has no T1, every policy gets a failure row.
    cfg = _compose(["experiment=bprr_clustered", "smoke=true", "topology.a100_count=0"])
    tables = _run(cfg, tmp_path)
    failures = tables["failures"]
    assert set(failures["policy"]) == {"petals", "cg_bp+ws_rr"}
    assert set(failures["design_concurrency"]) == {1}
    assert tables["requests"].empty
    assert tables["table3"].empty


def test_a_run_that_serves_nothing_exits_with_the_reason(tmp_path: Path) -> None:
    from harness.experiment import ExperimentFailedError
    from harness.run import run_experiment

    # One server cannot hold BLOOM's 70 blocks: every policy of every cell fails.
    cfg = _compose(["experiment=bprr_scattered", "smoke=true", "bprr.num_servers=1", "logger=none"])
    with pytest.raises(ExperimentFailedError, match="InfeasiblePlacementError") as info:
        run_experiment(cfg, tmp_path)
    assert str(tmp_path) in str(info.value)
    assert len(pd.read_parquet(tmp_path / "failures.parquet")) == 4  # the reasons are kept as rows too


def test_smoke_does_not_hide_an_unknown_topology(tmp_path: Path) -> None:
    from harness.config import ConfigError

    cfg = _compose(["experiment=bprr_scattered", "smoke=true", "bprr.topologies=[abvt,nosuch]"])
    with pytest.raises(ConfigError, match="nosuch"):
        instantiate(cfg.experiment.run)(cfg, tmp_path)


def test_table3_splits_each_reduction_into_algorithm_and_delays() -> None:
    from experiments.placement.bprr import table3

    cell = {"client_group": 0, "arrival_rate_per_s": 0.1, "max_tokens": 64}
    rows = []
    for on in (False, True):
        for policy, base, delay in (("petals", 1.0, 250.0), ("cg_bp+ws_rr", 0.5, 60.0)):
            rows.append({**cell, "allocation_delays": on, "policy": policy,
                         "per_token_s_mean": base + (delay / 64 if on else 0.0)})
    t = table3(pd.DataFrame(rows), "petals", "cg_bp+ws_rr", (250.0, 60.0)).set_index("allocation_delays")
    assert t.loc[False, "algorithm_reduction_pct"] == pytest.approx(50.0)
    assert t.loc[True, "algorithm_reduction_pct"] == pytest.approx(50.0)  # the delays removed, the same gain
    assert t.loc[False, "delay_only_reduction_pct"] == pytest.approx(0.0)
    assert t.loc[True, "delay_only_reduction_pct"] == pytest.approx(100 * (1 - (1 + 60 / 64) / (1 + 250 / 64)))
    assert t.loc[True, "reduction_pct"] > t.loc[True, "algorithm_reduction_pct"]
    assert (t.loc[True, "delay_petals_s"], t.loc[True, "delay_proposed_s"]) == (250.0, 60.0)


def test_summary_separates_the_delay_share_of_the_per_token_time() -> None:
    from experiments.placement.scenario import summarize

    requests = pd.DataFrame({"policy": ["p", "p"], "scenario": ["s", "s"], "max_tokens": [64, 64],
                             "per_token_s": [2.0, 3.0], "allocation_delay_s": [64.0, 64.0], "ttft_s": [1.0, 1.0],
                             "wait_s": [0.0, 0.0], "request_id": [0, 1], "run": [0, 0]})
    out = summarize(requests, pd.DataFrame({"policy": ["p"], "scenario": ["s"], "max_tokens": [64]})).iloc[0]
    assert out["per_token_delay_s_mean"] == pytest.approx(1.0)
    assert out["per_token_no_delay_s_mean"] == pytest.approx(1.5)
