"""Reading the Azure LLM inference traces (TIMESTAMP, ContextTokens, GeneratedTokens) with row-level
validation."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.paths import shared_file
from schedulers.errors import TraceFormatError

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
TRACE_FILES = {"code": "AzureLLMInferenceTrace_code.csv", "conv": "AzureLLMInferenceTrace_conv.csv"}


@dataclass(frozen=True)
class Trace:
    """A parsed trace: arrival offsets from the first request (s), prompt and output token counts."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)


def trace_path(trace: str) -> Path:
    """``code``/``conv`` name the shared Azure traces; anything else is a path to a CSV with the same
    columns."""
    if trace in TRACE_FILES:
        return shared_file("data", "traces", TRACE_FILES[trace])
    return Path(trace).expanduser()


@lru_cache(maxsize=8)
def load_trace(trace: str) -> Trace:
    """Parse a trace CSV; a bad row raises ``TraceFormatError`` with its row number (header = row 1)."""
    path = trace_path(trace)
    if not path.exists():
        raise TraceFormatError(
            f"trace file {path} not found; name one of {sorted(TRACE_FILES)} (the Azure LLM traces in "
            f"../shared/data/traces) or give the path of a CSV with columns {','.join(COLUMNS)}"
        )
    stamps: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise TraceFormatError(f"{path}: row 1 must be the header {','.join(COLUMNS)}, got {header}")
        for row_no, row in enumerate(reader, start=2):
            if len(row) != 3:
                raise TraceFormatError(f"{path}: row {row_no} has {len(row)} fields, expected 3: {row}")
            try:
                stamp = datetime.fromisoformat(row[0].strip()[:26]).timestamp()
                ctx, gen = int(row[1]), int(row[2])
            except ValueError as exc:
                raise TraceFormatError(f"{path}: row {row_no} is not TIMESTAMP,int,int: {row} ({exc})") from exc
            if ctx < 0 or gen < 0:
                raise TraceFormatError(f"{path}: row {row_no} has a negative token count: {row}")
            stamps.append(stamp)
            inputs.append(ctx)
            outputs.append(gen)
    if not stamps:
        raise TraceFormatError(f"{path}: no data rows")
    t = np.asarray(stamps)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    return Trace(
        t,
        np.asarray(inputs, dtype=np.int64)[order],
        np.maximum(np.asarray(outputs, dtype=np.int64)[order], 1),
    )
