"""A run folder says what ran (no unread defaults, every listed option's effective keys) and repeats it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from harness.runfolder import render, repeat_overrides

ROOT = Path(__file__).resolve().parents[2]


def _app(env: dict[str, str], *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *words], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600, cwd=ROOT)


@pytest.mark.parametrize("value", [None, True, False, 0, -3, 2.5, 1e-9, "fp16", "16", "it's", "a,b", "x=y",
                                   "${oc.env:HOME}", [], [1, "a", None], {"a": [1, 2], "b": {"c": "d"}}])
def test_values_render_back_through_hydras_grammar(value: Any) -> None:
    (o,) = OverridesParser.create().parse_overrides([f"k={render(value)}"])
    parsed = o.value()
    if not isinstance(parsed, str | int | float | bool | type(None)):
        parsed = OmegaConf.to_container(OmegaConf.create({"v": parsed}))["v"]  # type: ignore[index]
    assert parsed == value


@pytest.mark.slow
def test_a_loading_run_folder_describes_what_ran_and_repeats_it(tmp_path: Path) -> None:
    env = {"COLDSTART_RESULTS": str(tmp_path / "results"), "COLDSTART_CACHE": str(tmp_path / "cache"),
           "COLDSTART_DRAM_DIR": str(tmp_path / "dram")}
    out = _app(env, "model=tiny-opt", "loaders=[native]", "runtimes=[forkserver]", "trials=1",
               "cache_states=[warm]", "progress=false", "loader_args.native.threads=2", "ceiling_max_bytes=1048576")
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "results" / "runs" / "loading").iterdir()
    described = yaml.safe_load((run / "config.yaml").read_text())
    # the groups this experiment does not read as one option are not described as if they ran
    assert "loader" not in described
    assert "runtime" not in described
    assert described["model"]["name"] == "tiny-opt"
    native = described["options"]["loader"]["native"]  # every effective key, not only the overridden one
    assert native["threads"] == 2
    assert {"chunk_bytes", "direct_io", "staging", "dram_dir"} <= native.keys()
    assert native["dram_dir"] == str(tmp_path / "dram")
    assert "forkserver" in described["options"]["runtime"]

    # repeated elsewhere: the cache and DRAM tier the environment names now differ; the repeat pins the recorded ones
    moved = {**env, "COLDSTART_CACHE": str(tmp_path / "other-cache"), "COLDSTART_DRAM_DIR": str(tmp_path / "d2"),
             "COLDSTART_RESULTS": str(tmp_path / "again")}
    with pytest.MonkeyPatch.context() as mp:  # this process's own folders come back afterwards, not the run's
        for key, value in moved.items():
            mp.setenv(key, value)
        words = repeat_overrides(run)
    assert f"storage.root='{tmp_path / 'cache' / 'checkpoints'}'" in words
    assert f"loader_args.native.dram_dir='{tmp_path / 'dram'}'" in words
    again = _app(moved, "--from-run", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    (rerun,) = (tmp_path / "again" / "runs" / "loading").iterdir()
    repeated = yaml.safe_load((rerun / "config.yaml").read_text())
    for key in ("model", "storage", "loaders", "runtimes", "cache_states", "trials", "options", "experiment"):
        assert repeated[key] == described[key], key
    # an override given after the folder wins, and is the only difference
    shown = _app(moved, "--from-run", str(run), "trials=3", "--cfg", "job")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["trials"] == 3


def test_from_run_needs_a_run_folder(tmp_path: Path) -> None:
    out = _app({"COLDSTART_RESULTS": str(tmp_path)}, "--from-run", str(tmp_path))
    assert out.returncode == 2
    assert "not a run folder" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
