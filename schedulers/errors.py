"""Named exceptions for the mistakes a user can make when configuring the serverless simulator."""

from __future__ import annotations


class UnknownModelError(ValueError):
    """A workload names a model that is not in the model zoo (``conf/model/``)."""


class ModelTooLargeError(ValueError):
    """A model needs more GPU memory than one server has (pipeline-parallel placement is not modelled)."""


class WorkloadConfigError(ValueError):
    """A workload parameter is out of range (rate ≤ 0, CV ≤ 0, empty model list, ...)."""


class CalibrationError(ValueError):
    """A calibration file is missing, malformed, or lacks a tier bandwidth."""


class TraceFormatError(ValueError):
    """A trace CSV has a bad row; the message names the file and the row number."""


class SimulatorInvariantError(RuntimeError):
    """The simulator broke one of its own invariants (capacity exceeded, request finished twice): a bug."""
