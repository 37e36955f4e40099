"""benchmarks/gpu_quick.sh's CPU dry run: same steps and output layout as on a GPU, so the script cannot rot.

The script is driven only through its command line and judged only by the files it writes; the ratios its summary
prints are recomputed here from the runs' own summary.csv and ceilings.json.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_quick.sh"
DryRun = tuple[subprocess.CompletedProcess[str], Path, float]
STEPS = ["install", "environment", "gpu_tests", "loading_tiny-opt", "ceilings", "loading_tiny-llama", "ablation"]


def _helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_quick_summary", ROOT / "benchmarks" / "gpu_quick_summary.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(tmp: Path, budget_s: int | None = None) -> DryRun:
    env = {**os.environ, "GPU_QUICK_DRYRUN": "1", "OUT": str(tmp / "out"), "PYTHON": sys.executable,
           "COLDSTART_CACHE": str(tmp / "cache"), "COLDSTART_RESULTS": str(tmp / "results")}
    if budget_s is not None:
        env["GPU_QUICK_BUDGET_S"] = str(budget_s)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    return proc, tmp / "out" / "dryrun-cpu", time.perf_counter() - t0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    return _dry_run(tmp_path_factory.mktemp("gpu_quick"))


@pytest.mark.slow(seconds=90)
def test_dry_run_passes_with_the_reference_layout(dry_run: DryRun) -> None:
    proc, machine, seconds = dry_run
    print(f"dry run: {seconds:.1f} s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = pd.read_csv(machine / "steps.csv")
    assert list(steps["step"]) == STEPS
    assert (steps["status"] == "ok").all(), steps.to_string()
    for name in STEPS[1:]:  # the time each step took is printed as it ends
        assert re.search(rf"\] {re.escape(name)}: ok in \d+\.\d+s", proc.stdout), name
    for f in ("summary.md", "ratios.csv", "ceilings.csv", "environment.txt", "gpu_tests/junit.xml",
              "sllm_ablation/summary.csv", "sllm_ablation/gains.csv", "sllm_ablation/config.yaml",
              "sllm_ablation/sllm_ablation.png"):
        assert (machine / f).stat().st_size > 0, f
    assert (machine / "nvidia-smi.txt").read_text().startswith("no nvidia-smi")
    assert "torch:" in (machine / "environment.txt").read_text()
    for model in ("tiny-opt", "tiny-llama"):
        run = machine / "sllm_loading" / model
        for f in ("summary.csv", "trials.parquet", "ceilings.json", "config.yaml", "speedups.csv", "sllm_loading.png"):
            assert (run / f).stat().st_size > 0, f"{model}/{f}"
        summary = pd.read_csv(run / "summary.csv")
        assert set(summary["loader"]) == {"native", "safetensors", "torch"}
        assert set(summary["cache_state"]) == {"cold", "warm", "hot"}
        assert (summary.loc[summary["cache_state"] != "hot", "status"] == "ok").all()
    # the gpu tests ran and each skipped without CUDA (however many there are)
    assert re.search(r"gpu tests: 0 passed, 0 failed, [1-9]\d* skipped", (machine / "summary.md").read_text())


@pytest.mark.slow(seconds=90)  # beside the dry run whose fixture it shares
def test_dry_run_summary_ratios_come_from_the_runs(dry_run: DryRun) -> None:
    proc, machine, _ = dry_run
    text = (machine / "summary.md").read_text()
    assert text in proc.stdout  # the one-screen summary is printed
    checked = 0
    for model in ("tiny-opt", "tiny-llama"):
        run = machine / "sllm_loading" / model
        s = pd.read_csv(run / "summary.csv").set_index(["loader", "cache_state"])["load_s_median"]
        for state in ("cold", "warm"):
            line = re.search(rf"^- {model} {state}: native (\S+) s \| vs safetensors (\S+)x \| vs torch (\S+)x$",
                             text, re.M)
            assert line, f"no ratio line for {model} {state}"
            native = s[("native", state)]
            assert float(line.group(1)) == pytest.approx(native, abs=1e-4)
            assert float(line.group(2)) == pytest.approx(s[("safetensors", state)] / native, abs=0.006)
            assert float(line.group(3)) == pytest.approx(s[("torch", state)] / native, abs=0.006)
            checked += 1
        hot = re.search(rf"^- {model} hot: native (\S+) GB/s = (\S+) of memcpy \((\S+) GB/s\)", text, re.M)
        assert hot, f"no hot fraction line for {model}"
        summary = pd.read_csv(run / "summary.csv").set_index(["loader", "cache_state"])
        gbps = summary.loc[("native", "hot"), "throughput_gbps_median"]
        memcpy = json.loads((run / "ceilings.json").read_text())[f"{model} fp16"]["gbps"]["memcpy"]
        assert float(hot.group(3)) == pytest.approx(memcpy, abs=0.006)
        assert float(hot.group(2)) == pytest.approx(gbps / memcpy, abs=0.0006)
        assert not math.isnan(gbps)
    assert checked == 4


@pytest.mark.slow
def test_a_tiny_budget_stops_cleanly_and_keeps_what_finished(tmp_path: Path) -> None:
    proc, machine, seconds = _dry_run(tmp_path, budget_s=22)
    assert proc.returncode != 0
    assert seconds < 22 + 20  # killed at the budget (the summary runs within the reserve), not left to finish
    steps = pd.read_csv(machine / "steps.csv")
    assert list(steps["step"]) == STEPS  # every step is accounted for
    first_bad = steps.index[steps["status"] != "ok"][0]
    assert steps.at[first_bad, "status"] in ("timeout", "skipped")
    assert (steps["status"] == "timeout").sum() <= 1
    assert (steps.loc[first_bad + 1:, "status"] == "skipped").all(), steps.to_string()
    assert (steps.loc[: first_bad - 1, "status"] == "ok").all()
    assert "NOT every step passed" in proc.stdout
    assert (machine / "summary.md").exists()
    assert (machine / "environment.txt").exists()
    if "timeout" in set(steps["status"]):
        killed = steps.loc[steps["status"] == "timeout", "step"].iloc[0]
        assert (machine / "logs" / f"{killed}.log").exists()  # the partial log of the killed step stays


def _small_run(tmp_path: Path, weights_s: float, cold_start_s: float) -> Path:
    """A finished small loading run as the script sees it: trials.parquet and run.log."""
    run = tmp_path / "small"
    run.mkdir()
    rows = [{"trial": t, "loader": ld, "format": fmt, "cache_state": "cold", "ok": True, "status": "ok",
             "bytes": 1e9, "cold_start_s": cold_start_s, "t_weights_s": weights_s}
            for t in range(3) for ld, fmt in (("native", "native"), ("safetensors", "safetensors"),
                                              ("torch", "torch_bin"), ("tensorizer", "tensorizer"))]
    pd.DataFrame(rows).to_parquet(run / "trials.parquet")
    (run / "run.log").write_text("[2026-01-01 00:00:05,000][coldstart.loading_suite][INFO] - cell 1/1\n")
    return run


def _plan(helper: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert helper.main(argv) == 0
    return dict(re.findall(r"^(\w+)=(.*)$", capsys.readouterr().out.replace("'", ""), re.M))


def test_plan_big_shrinks_trials_then_skips_by_measured_cost(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    helper = _helper()
    run = _small_run(tmp_path, weights_s=1.0, cold_start_s=3.0)  # 12 trials: 24 s fixed, 12 s of weights
    started = datetime.datetime(2026, 1, 1).timestamp()  # local time, as run.log writes it: 5 s of start-up
    base = ["plan-big", "--small-run", str(run), "--small-step-s", "60", "--small-started", str(started),
            "--trials", "3", "--big-bytes", str(5 * 10**9), "--loaders", "[native,safetensors,torch,tensorizer]",
            "--free-disk-bytes"]
    roomy = [*base, str(10**12)]
    # other = 60 - 5 - 36 = 19 s; estimate(r=5, n) = 1.25 * (5 + (8 + 4 * 5) * n + 19 * 5) = 160, 195, 230 s
    assert _plan(helper, [*roomy, "--avail-s", "300"], capsys)["TRIALS"] == "3"
    assert _plan(helper, [*roomy, "--avail-s", "200"], capsys)["TRIALS"] == "2"
    core = _plan(helper, [*roomy, "--avail-s", "155"], capsys)  # every loader: 160 s; ours and the baselines: 151 s
    assert (core["TRIALS"], core["LOADERS"]) == ("1", "[native,safetensors,torch]")
    assert _plan(helper, [*roomy, "--avail-s", "100"], capsys)["TRIALS"] == "0"
    # time kept for 10 more trials at the small run's 55 s / 12 trials (64 s): 265 s left hold 2 trials, not 3
    assert _plan(helper, [*roomy, "--avail-s", "265"], capsys)["TRIALS"] == "3"
    assert _plan(helper, [*roomy, "--avail-s", "265", "--reserve-trials", "10"], capsys)["TRIALS"] == "2"
    # four formats of 5 GB (+10 %) do not fit 20 GB: tensorizer, the only peer with a format of its own, goes
    plan = _plan(helper, [*base, str(20 * 10**9), "--avail-s", "900"], capsys)
    assert plan["LOADERS"] == "[native,safetensors,torch]"
    assert "dropped tensorizer" in plan["NOTE"]
    assert _plan(helper, [*base, str(10 * 10**9), "--avail-s", "900"], capsys)["TRIALS"] == "0"


def test_plan_hot_fits_the_dram_tier(capsys: pytest.CaptureFixture[str]) -> None:
    helper = _helper()
    base = ["plan-hot", "--states", "[cold,warm,hot]", "--dram-cap", str(8 << 30)]
    assert _plan(helper, [*base, "--bytes", str(2 << 30), "--tmpfs-free", str(64 << 30)], capsys)["EXTRA"] == ""
    raised = _plan(helper, [*base, "--bytes", str(13 << 30), "--tmpfs-free", str(64 << 30)], capsys)
    assert raised["STATES"] == "[cold,warm,hot]"
    assert raised["EXTRA"] == f"loader_args.native.dram_capacity_bytes={int(13 * 2**30 * 1.2)}"  # 1.2x the bytes
    assert _plan(helper, [*base, "--bytes", str(13 << 30), "--tmpfs-free", str(1 << 30)], capsys)["STATES"] == \
        "[cold,warm]"
