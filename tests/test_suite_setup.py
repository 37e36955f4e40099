"""How ``make test`` runs the suite: parallel workers that keep grouped tests together, a reproducible shuffled
order, and per-process isolation of what the harness writes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ISOLATED_ENV, RAY_GROUP

ROOT = Path(__file__).resolve().parents[1]

GROUPED = '''
import os
import pytest

def _note(kind, i):
    with open(os.path.join(os.environ["INNER_OUT"], "seen.txt"), "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {kind} {i}\\n")

@pytest.fixture(scope="module")
def shared():
    return os.getpid()

@pytest.mark.parametrize("i", range(6))
def test_shares_a_module_fixture(shared, i):
    _note("shared", i)

@pytest.mark.parametrize("i", range(6))
def test_alone(i):
    _note("alone", i)

@pytest.mark.parametrize("i", range(4))
@pytest.mark.xdist_group("ray")
def test_in_the_ray_group(i):
    _note("ray", i)
'''

CTRL_C = '''
import signal
import subprocess
import sys

def test_ctrl_c_is_handled_here_and_in_what_a_test_starts():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    child = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    assert subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip() == "True"
'''


def _run_inner(tmp_path: Path, *args: str, source: str = GROUPED, sigint_ignored: bool = False,
               ) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """A pytest session on a generated test file, with this suite's conftest (started with SIGINT ignored, as a
    background job of a script is, when asked); its output and, in the order they ran, the (worker, kind, index)
    each test noted."""
    (tmp_path / "tests").mkdir(parents=True)
    (tmp_path / "tests" / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "tests" / "test_inner.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INNER_OUT": str(tmp_path)}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir",
                          str(tmp_path), str(tmp_path / "tests"), *args],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, preexec_fn=ignore)
    seen = tmp_path / "seen.txt"
    return out, [line.split() for line in seen.read_text().splitlines()] if seen.exists() else []


def test_parallel_workers_keep_each_group_on_one_worker(tmp_path: Path) -> None:
    """``--dist loadgroup`` as ``make test`` runs it: tests sharing a module fixture, and the Ray group, each on one
    worker (a pytest/xdist pairing that drops the groups fails here, not silently)."""
    out, notes = _run_inner(tmp_path, "-n", "2", "--dist", "loadgroup")
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(notes) == 16
    seen: dict[str, set[str]] = {}
    for worker, kind, _ in notes:
        seen.setdefault(kind, set()).add(worker)
    assert len(seen["shared"]) == 1, seen
    assert len(seen[RAY_GROUP]) == 1, seen
    assert set().union(*seen.values()) == {"gw0", "gw1"}, seen  # each worker got work (which, is dynamic)


def test_a_shuffled_order_is_replayed_by_its_seed(tmp_path: Path) -> None:
    runs = []
    for seed in ("7", "7", "8"):
        out, notes = _run_inner(tmp_path / f"{seed}-{len(runs)}", "-n", "0",
                                "--random-order-bucket=global", f"--random-order-seed={seed}")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"--random-order-seed={seed}" in out.stdout  # the seed is printed, so a failing order can be replayed
        runs.append([f"{kind}{i}" for _, kind, i in notes])
    assert len(runs[0]) == 16
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    in_file_order = [f"{k}{i}" for k, n in (("shared", 6), ("alone", 6), ("ray", 4)) for i in range(n)]
    assert runs[0] != in_file_order
    assert sorted(runs[0]) == sorted(in_file_order)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_suite_started_with_ctrl_c_ignored_still_gets_it(tmp_path: Path, workers: str) -> None:
    """``make test &`` in a script starts pytest with SIGINT ignored; the tests that interrupt a run (and the
    processes they start) must still receive it, in this process and in every xdist worker."""
    out, _ = _run_inner(tmp_path, "-n", workers, source=CTRL_C, sigint_ignored=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_test_process_writes_only_to_its_own_folders() -> None:
    """The checkpoint cache, results and DRAM tier of this process are its own temporary folders, not the user's."""
    home = Path.home()
    for name in ISOLATED_ENV:
        path = Path(os.environ[name])
        assert path.exists() or path.parent.exists(), name
        assert "coldstart-tests-" in str(path), (name, path)
        assert not path.is_relative_to(home / ".cache" / "coldstart"), (name, path)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    assert all(f"coldstart-tests-{worker}-" in os.environ[n] for n in ISOLATED_ENV)


@pytest.mark.parametrize("target", ["test", "test-random"])
def test_make_targets_run_in_parallel_and_the_shuffle_prints_its_seed(target: str) -> None:
    dry = subprocess.run(["make", "-n", target, "SEED=123"], capture_output=True, text=True, cwd=ROOT, check=True)
    pytest_line = next(line for line in dry.stdout.splitlines() if "/pytest " in line)
    assert "--dist loadgroup" in pytest_line
    assert re.search(r"-n \d+", pytest_line)
    if target == "test-random":
        assert "--random-order-seed=123" in pytest_line
        assert "replay with make test-random SEED=123" in dry.stdout
    else:
        assert "random-order" not in pytest_line  # make test keeps the file order
