"""What was typed is checked before anything runs: one line and exit 2 for every configuration error, whichever layer
finds it; no override that a run would ignore; a bare word given to a list key is a one-element list."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.config import ConfigError, compose_config, name_list
from harness.overrides import as_lists, check_reads, check_types, jobs, one_line, parse, preflight

ROOT = Path(__file__).resolve().parents[2]


def _app(tmp_path: Path, *words: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results")}
    return subprocess.run([sys.executable, "-m", "harness", *words], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    return lines[0]


@pytest.mark.parametrize(("words", "needles"), [
    (["model=nope"], ["model=nope is not an option", "opt-125m", "llama-2-7b"]),
    (["experiment=nope"], ["experiment=nope is not an option", "sllm_scheduler"]),
    (["storage=nope"], ["storage=nope is not an option", "['local', 'remote']"]),
    (["trial=3"], ["trial=3: there is no key 'trial'", "did you mean trials"]),
    (["trials=abc"], ["trials=abc: expected an integer", "default 5"]),
    (["experiment=bprr_clustered", "trials=7"], ["trials=7: there is no key 'trials'"]),
    (["experiment=bprr_clustered", "+trials=7"], ["+trials=7 would be ignored", "does not read 'trials'"]),
    (["experiment=bprr_clustered", "dtype=int8"], ["dtype=int8 would be ignored", "does not read 'dtype'"]),
    (["experiment=sllm_scheduler", "smoke=true", "workload.rps=abc"],
     ["workload.rps=abc would be ignored", "experiment.sweep.rps"]),
    (["experiment=sllm_scheduler", "workload.rps=0.01"], ["workload.rps=0.01 would be ignored"]),
    (["experiment=serverless", "workload.rps=abc"], ["workload.rps=abc: expected a number"]),
    (["-m", "hydra/sweeper=optuna"], ["hydra/sweeper=optuna", "pip install -e '.[optuna]'"]),
    (["-m", "model=tiny-opt,nope"], ["model=nope is not an option"]),  # the second job, before the first runs
    (["-m", "loaders=[native]", "--cfg", "job"], ["Only one of --run, --multirun"]),
])
def test_a_configuration_error_is_one_line_and_exit_2(tmp_path: Path, words: list[str], needles: list[str]) -> None:
    line = _one_error_line(_app(tmp_path, *words))
    assert line.startswith("coldstart: ")
    assert "+trials" not in line.replace("+trials=7 would", "")  # never Hydra's hint to add a key nobody reads
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "results").exists()  # refused before any run started


def test_an_override_of_a_key_the_experiment_reads_passes(tmp_path: Path) -> None:
    out = _app(tmp_path, "experiment=serverless", "workload.rps=0.5", "seed=3", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.workload.rps == 0.5
    assert cfg.seed == 3


def test_options_in_the_users_config_folder_are_found(tmp_path: Path) -> None:
    """``hydra.searchpath`` adds the user's option files: the check composes with it, as Hydra will."""
    out = _app(tmp_path, f"hydra.searchpath=[file://{ROOT / 'docs' / 'examples' / 'conf'}]", "model=my-local-opt",
               "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).model.name == "my-local-opt"


def test_a_bare_word_given_to_a_list_key_is_a_one_element_list(tmp_path: Path) -> None:
    out = _app(tmp_path, "loaders=native", "runtimes=pool", "cache_states=warm", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert list(cfg.loaders) == ["native"]
    assert list(cfg.runtimes) == ["pool"]
    assert list(cfg.cache_states) == ["warm"]
    assert preflight(["loaders=native,torch"]) == ["loaders=[native],[torch]"]  # a sweep of words: lists each
    assert as_lists(parse(["loaders=[a,b]", "trials=3"]), ["loaders"]) == ["loaders=[a,b]", "trials=3"]


def test_name_list_reads_a_word_as_one_name_and_refuses_a_mapping() -> None:
    cfg = OmegaConf.create({"loaders": "native", "runtimes": None, "states": ["cold", "warm"], "bad": {"a": 1}})
    assert name_list(cfg, "loaders") == ["native"]  # never ['n', 'a', 't', ...]
    assert name_list(cfg, "runtimes", ["fresh"]) == ["fresh"]
    assert name_list(cfg, "states") == ["cold", "warm"]
    with pytest.raises(ConfigError, match=r"bad=.*expected a list such as bad=\[a,b\]"):
        name_list(cfg, "bad")


def test_every_value_of_a_sweep_is_composed() -> None:
    typed = parse(["model=a,b,c", "dtype=fp16", "trials=1,2"])
    assert jobs(typed) == [["model=a", "dtype=fp16", "trials=1"], ["model=b", "dtype=fp16", "trials=1"],
                           ["model=c", "dtype=fp16", "trials=1"], ["model=a", "dtype=fp16", "trials=2"]]


def test_types_follow_the_default_value() -> None:
    base = compose_config(["experiment=loading"])
    assert check_types(base, parse(["trials=7", "max_resident_fraction=1", "verify=false", "trial_threads=2"])) == []
    assert check_types(base, parse(["loaders=native"])) == ["loaders"]
    for bad, kind in (("trials=2.5", "an integer"), ("verify=yes", "true or false"),
                      ("max_resident_fraction=lots", "a number"), ("loaders={a: 1}", "a list")):
        with pytest.raises(ConfigError, match=kind):
            check_types(base, parse([bad]))


def test_keys_an_experiment_sets_itself_or_does_not_read_are_refused() -> None:
    cfg = compose_config(["experiment=sllm_regime"])
    with pytest.raises(ConfigError, match=r"cluster.dram_gb=9 .*sets cluster.dram_gb.*experiment.regime"):
        check_reads(cfg, parse(["cluster.dram_gb=9"]))
    check_reads(cfg, parse(["cluster.gpus_per_server=2", "experiment.regime.rps=[1]", "seed=4"]))
    cfg = compose_config(["experiment=pipeline_real"])
    with pytest.raises(ConfigError, match="does not read 'device'"):
        check_reads(cfg, parse(["device=cuda"]))


def test_hydras_messages_become_one_line() -> None:
    class Composition(Exception):
        pass

    text = "In 'config': Could not find 'loader/nope'\n\nAvailable options in 'loader':\n\tnative\n\ttorch\n"
    assert one_line(Composition(text), ["loader=nope"]) == "loader=nope is not an option; choose one of " \
                                                           "['native', 'torch']"
    assert "\n" not in one_line(Composition("first\nsecond\n"), [])


def test_an_error_found_while_running_is_one_line_too(tmp_path: Path) -> None:
    """A checkpoint folder that cannot be written is found by the run (after Hydra started its log): one ERROR line
    naming the key, no traceback, exit 2."""
    (tmp_path / "file").write_text("a file where a folder would go")
    out = _app(tmp_path, "model=tiny-opt", "loaders=[torch]", "trials=1", "progress=false",
               f"storage.root={tmp_path / 'file'}/sub", "cache_states=[warm]")
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert len(errors) == 1, text
    assert "CheckpointWriteError" in errors[0]
    assert "storage.root (COLDSTART_CACHE)" in errors[0]
    assert "Traceback" not in text


def _logged(results: Path, needle: str) -> bool:
    """Whether a run's ``run.log`` (written record by record) holds ``needle`` yet."""
    return any(needle in log.read_text() for log in results.rglob("run.log"))


@pytest.mark.slow
def test_ctrl_c_ends_with_one_clean_line(tmp_path: Path) -> None:
    env = {**os.environ, "COLDSTART_RESULTS": str(tmp_path / "results")}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "model=tiny-opt", "loaders=[torch]", "trials=200",
                             "cache_states=[warm]", "progress=false", "ceiling_max_bytes=1048576"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not _logged(tmp_path / "results", "ceilings (GB/s)"):
        time.sleep(0.2)  # the ceilings are measured (and logged) just before the first trial
    time.sleep(1.0)
    assert proc.poll() is None, "the run ended before Ctrl-C was sent: the test would check nothing"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("coldstart: stopped by Ctrl-C")
    (status,) = (tmp_path / "results").rglob("status.json")
    assert '"complete": false' in status.read_text()
