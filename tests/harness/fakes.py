"""Hand-written fake loaders for failure tests (importable by trial subprocesses via ``_target_``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.executors.base import TrialError
from harness.executors.local import LocalExecutor
from loaders.base import BaseLoader, LoadResult
from loaders.safetensors import SafetensorsLoader


class CrashingLoader(BaseLoader):
    """Raises inside the trial process."""

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        raise RuntimeError("fake loader exploded on purpose")


class DyingLoader(BaseLoader):
    """Kills its own process without a Python traceback (like a segfault)."""

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        os.write(2, b"native crash in fake loader\n")
        os._exit(139)


class HangingLoader(BaseLoader):
    """Never finishes."""

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        time.sleep(3600)
        raise AssertionError("unreachable")


class HangingWithChildLoader(BaseLoader):
    """Starts a child process of its own (its pid written to ``pid_file``), then never finishes: killing the trial
    must take the child too."""

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    def __init__(self, pid_file: str) -> None:
        self.pid_file = pid_file

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        Path(self.pid_file).write_text(f"{os.getpid()} {child.pid}")
        time.sleep(3600)
        raise AssertionError("unreachable")


class SlowLoader(SafetensorsLoader):
    """Writes its process's pid to ``pid_file``, sleeps ``sleep_s``, then loads correctly: a trial slow enough to be
    killed or interrupted mid-way, whose process the test can name."""

    def __init__(self, sleep_s: float, pid_file: str) -> None:
        self.sleep_s, self.pid_file = sleep_s, pid_file

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        Path(self.pid_file).write_text(str(os.getpid()))
        time.sleep(self.sleep_s)
        return super().load(checkpoint_dir, device)


class CorruptingLoader(SafetensorsLoader):
    """Loads correctly, then flips one byte of one tensor: the checksum verification must catch it."""

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        result = super().load(checkpoint_dir, device)
        name = sorted(result.state_dict)[0]
        t = result.state_dict[name].clone()
        t.view(-1).view(torch.uint8)[0] ^= 0xFF
        result.state_dict[name] = t
        return result


class MissingPackageLoader(BaseLoader):
    """Needs a package that is not installed."""

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)
    requires: ClassVar[tuple[str, ...]] = ("coldstart_no_such_package",)
    extra: ClassVar[str] = "peers"

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult:
        raise AssertionError("never called: unavailable")


class RecordingExecutor:
    """An executor that records every trial spec it is handed and runs none (each trial is a recorded failure)."""

    specs: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **_: Any) -> None:  # the executor option's own keys (python: ...) are not used
        pass

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        RecordingExecutor.specs.append(spec)
        raise TrialError("recorded, not run")

    def nodes(self) -> list[str]:
        return []

    def connect(self) -> None:
        """Nothing to connect to."""

    def close(self) -> None:
        """Nothing held."""


class InterruptingExecutor(LocalExecutor):
    """Runs ``after`` real trials, then raises ``error`` (``KeyboardInterrupt`` by default) as a Ctrl-C would."""

    def __init__(self, after: int = 1, error: str = "KeyboardInterrupt", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after, self.error, self.ran = after, error, 0

    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.ran >= self.after:
            raise KeyboardInterrupt if self.error == "KeyboardInterrupt" else RuntimeError(self.error)
        self.ran += 1
        return super().run_trial(spec, timeout_s)
