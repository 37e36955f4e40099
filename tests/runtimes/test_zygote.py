"""The zygote without torch: forked children in their own session, exit codes, kills, restarts, failed imports, and
no process left behind when its parent closes it or dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.zygote import Zygote, ZygoteError
from tests.runtimes.helpers import ZYGOTE, descendants, read_pids, running, wait_gone

FAKES = "tests.runtimes.fakes"


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    z = Zygote(["json"], [], start_timeout_s=60)
    z.start()
    yield z
    z.close()


def test_a_child_runs_in_its_own_session_and_reports_exit_code_0(zygote: Zygote, tmp_path: Path) -> None:
    assert zygote.starts == 1
    assert zygote.pid() in descendants(ZYGOTE)
    pid = zygote.fork(f"{FAKES}:write_ids", [str(tmp_path / "ids")], str(tmp_path / "log"))
    assert zygote.wait(pid, 30) == 0
    child, group, session = read_pids(tmp_path / "ids")
    assert child == pid
    assert group == session == pid  # setsid: killpg(pid) reaches it and all it starts, whatever its zygote does
    assert zygote.pid() not in (pid, group)


def test_exit_codes_and_tracebacks_come_back(zygote: Zygote, tmp_path: Path) -> None:
    log = tmp_path / "log"
    pid = zygote.fork(f"{FAKES}:raise_error", ["model exploded (42)"], str(log))
    assert zygote.wait(pid, 30) == 1
    text = log.read_text()
    assert "about to fail" in text  # the child's stdout and stderr go to its log
    assert "Traceback" in text
    assert "RuntimeError: model exploded (42)" in text
    pid = zygote.fork(f"{FAKES}:exit_with", [7], str(tmp_path / "log7"))
    assert zygote.wait(pid, 30) == 7
    pid = zygote.fork(f"{FAKES}:no_such_function", [], str(tmp_path / "log-missing"))
    assert zygote.wait(pid, 30) == 1
    assert "AttributeError" in (tmp_path / "log-missing").read_text()


def test_a_hanging_child_times_out_and_kill_takes_its_own_children(zygote: Zygote, tmp_path: Path) -> None:
    pid = zygote.fork(f"{FAKES}:hang_with_child", [str(tmp_path / "pids")], str(tmp_path / "log"))
    child, grandchild = read_pids(tmp_path / "pids")
    assert child == pid
    with pytest.raises(TimeoutError, match=f"child {pid} still running after 0.3 s"):
        zygote.wait(pid, 0.3)
    assert running(grandchild)
    zygote.kill(pid)
    assert zygote.wait(pid, 10) == -signal.SIGKILL
    assert wait_gone([pid, grandchild]) == set()
    assert zygote.alive()  # the zygote serves on
    again = zygote.fork(f"{FAKES}:exit_with", [0], str(tmp_path / "log2"))
    assert zygote.wait(again, 30) == 0


def test_a_dead_zygote_is_restarted_by_the_next_fork(zygote: Zygote, tmp_path: Path) -> None:
    old = zygote.pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old]) == set()
    assert not zygote.alive()
    pid = zygote.fork(f"{FAKES}:exit_with", [0], str(tmp_path / "log"))
    assert zygote.wait(pid, 30) == 0
    assert zygote.starts == 2
    assert len(zygote.start_s) == 2
    assert zygote.pid() not in (None, old)
    assert descendants(ZYGOTE) == {zygote.pid()}


def test_close_kills_running_children_and_the_zygote(tmp_path: Path) -> None:
    z = Zygote([], [], start_timeout_s=60)
    z.start()
    zpid = z.pid()
    assert zpid is not None
    pid = z.fork(f"{FAKES}:hang_with_child", [str(tmp_path / "pids")], str(tmp_path / "log"))
    child, grandchild = read_pids(tmp_path / "pids")
    z.close()
    z.close()  # idempotent
    assert wait_gone([zpid, child, grandchild]) == set()
    assert not z.alive()
    assert z.pid() is None
    assert pid == child


def test_a_failed_import_is_a_zygote_error_and_leaves_no_process() -> None:
    before = descendants(ZYGOTE)
    z = Zygote(["json", "coldstart_no_such_module"], [], start_timeout_s=60)
    with pytest.raises(ZygoteError, match="ModuleNotFoundError: No module named 'coldstart_no_such_module'"):
        z.start()
    assert not z.alive()
    assert z.pid() is None
    assert wait_gone(descendants(ZYGOTE) - before) == set()


def test_a_killed_parent_takes_its_zygote_and_children_along(tmp_path: Path) -> None:
    """The harness dies (SIGKILL, no cleanup): the zygote sees its socket close and kills its children."""
    script = (
        "import sys, time\n"
        "from runtimes.zygote import Zygote\n"
        "z = Zygote([], [])\n"
        "z.start()\n"
        f"z.fork('{FAKES}:hang_with_child', [sys.argv[1]], sys.argv[2])\n"
        "print(z.pid(), flush=True)\n"
        "time.sleep(3600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "pids"), str(tmp_path / "log")],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert parent.stdout is not None
        zpid = int(parent.stdout.readline())
        child, grandchild = read_pids(tmp_path / "pids")
        assert running(zpid)
        assert running(child)
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone([zpid, child, grandchild]) == set()
