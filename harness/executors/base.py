"""The executor contract: run one trial spec in a fresh process and return its result or a TrialError."""

from __future__ import annotations

from typing import Any, Protocol


class TrialError(RuntimeError):
    """A trial process crashed, hung past its timeout or wrote no result; the message carries its stderr."""


class Executor(Protocol):
    def run_trial(self, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]: ...
