"""A real serverless run's figures: cold-start phases per runtime and tier (never pooled), titles naming the runtime
and storage, the composed policy under its option name and its fixed colour."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import DictConfig

from experiments import style
from experiments.serverless.plots import plot_serverless_real
from experiments.serverless.simulated import policies_of

PHASES = {"handoff_s": 1.0, "imports_s": 2.0, "device_init_s": 0.0, "download_s": 0.0, "weights_s": 0.05,
          "model_build_s": 0.01}


def _cold(runtime: str, tier: str, scale: float, n: int) -> list[dict[str, object]]:
    phases = {k: v * scale for k, v in PHASES.items()}
    return [{"policy": "serverlessllm", "runtime": runtime, "tier": tier, **phases,
             "load_s": sum(phases.values()) + 0.1 * scale} for _ in range(n)]


def _real_run(path: Path, runtimes: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"real": {"dram_gb": 0.05, "ssd_gb": 1.0, "ssd_replicas": 1}}))
    pd.DataFrame([{"policy": "serverlessllm", "runtime": r, "requests": 2, "ttft_s_p50": 1.0} for r in runtimes]
                 ).to_csv(path / "summary.csv", index=False)
    requests = pd.DataFrame([{"policy": "serverlessllm", "runtime": r, "request_id": i, "model": "m", "ttft_s": t,
                              "queue_s": 0.0, "migration_s": 0.0, "load_s": t / 2, "cold_start": True,
                              "timed_out": False} for r in runtimes for i, t in enumerate((1.0, 3.0))])
    requests.to_parquet(path / "requests.parquet")
    scale = {"fresh": 1.0, "pool": 0.01}
    pd.DataFrame([row for r in runtimes for tier, n in (("ssd", 3), ("remote", 2))
                  for row in _cold(r, tier, scale[r] * (2 if tier == "remote" else 1), n)]
                 ).to_parquet(path / "cold_starts.parquet")
    return path


def test_cold_start_phases_stack_per_runtime_and_tier_and_add_up_to_the_load(tmp_path: Path) -> None:
    run = _real_run(tmp_path / "run", ["fresh", "pool"])
    written = {p.name for p in plot_serverless_real(run)}
    assert {"cold_start_phases.png", "latency_cdf.png", "cold_start_breakdown.png"} <= written
    plotted = pd.read_csv(run / "cold_start_phases.plotted.csv").set_index(["tier", "policy"])
    assert set(plotted.index) == {(t, f"serverlessllm · {r}") for t in ("ssd", "remote") for r in ("fresh", "pool")}
    fresh_ssd = plotted.loc[("ssd", "serverlessllm · fresh")]
    pool_remote = plotted.loc[("remote", "serverlessllm · pool")]
    assert fresh_ssd["n"] == 3
    assert pool_remote["n"] == 2
    assert fresh_ssd["t_imports_s"] == pytest.approx(2.0)  # never pooled with the pool's 0.02 s
    assert pool_remote["t_imports_s"] == pytest.approx(0.04)
    stacked = [c for c in plotted.columns if c.startswith("t_")]
    assert fresh_ssd[stacked].sum() == pytest.approx(sum(PHASES.values()) + 0.1)  # the rest of the call is "other"
    assert fresh_ssd["t_other_s"] == pytest.approx(0.1)


def test_a_single_runtime_run_names_its_runtime_and_storage_in_every_title(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    titles: list[str] = []
    save = style.save

    def record(fig, path, plotted=None):  # type: ignore[no-untyped-def]
        titles.append(fig.get_suptitle())
        return save(fig, path, plotted)

    monkeypatch.setattr(style, "save", record)
    plot_serverless_real(_real_run(tmp_path / "run", ["pool"]))
    assert len(titles) == 3
    for title in titles:
        assert "real run" in title
        assert "runtime pool" in title
        assert "DRAM 0.05 GB + SSD 1 GB per server" in title
    assert not any("panel's scenario" in t for t in titles)  # the simulator's title is not a real run's


def test_the_composed_policy_is_named_by_its_option(compose_cfg: Callable[..., DictConfig]) -> None:
    assert [n for n, _ in policies_of(compose_cfg("experiment=serverless_real"))] == ["serverlessllm"]
    assert [n for n, _ in policies_of(compose_cfg("experiment=serverless_real", "scheduler=shepherd"))] == ["shepherd"]


def test_a_policy_on_a_runtime_keeps_the_policy_colour_a_shade_per_runtime() -> None:
    base = style.color("serverlessllm")
    assert style.color("serverlessllm · fresh").lower() == base.lower()
    pool = style.color("serverlessllm · pool")
    assert pool != base
    assert pool == style.color("serverlessllm · pool")
    assert style.color("shepherd · pool") != pool
