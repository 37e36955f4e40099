"""The loader contract: build from config, load one checkpoint directory onto one device, report phase timings."""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import torch


class LoaderError(Exception):
    """Base of loader failures a user can cause."""


class LoaderUnavailableError(LoaderError):
    """The loader's optional package is not installed (names the extra to install)."""


class UnsupportedCheckpointError(LoaderError):
    """The checkpoint's format or dtype is one this loader cannot read."""


@dataclass
class LoadResult:
    """A loaded state dict plus what the loader itself measured.

    ``phases_s``: the loader's own sub-phases (e.g. ``read_s``, ``h2d_s``, ``wait_s``), seconds.
    ``bytes_by_tier``: which storage tier served how many bytes (``ssd``, ``dram``, ``remote``, ``page_cache``).
    ``info``: labels the loader reports about how it loaded (the native loader's ``path``, e.g. ``direct→arena``).
    ``pending``: work the load left running after it returned (the native loader's SSD-tier copy written behind a
    remote load); a caller waits for it with :meth:`settle` outside its timed region, before the next load.
    """

    state_dict: dict[str, torch.Tensor]
    phases_s: dict[str, float] = field(default_factory=dict)
    bytes_by_tier: dict[str, int] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    pending: Callable[[], object] | None = None

    def settle(self) -> float:
        """Wait for the work the load left running (none: return at once); the seconds waited."""
        if self.pending is None:
            return 0.0
        t0 = time.perf_counter()
        self.pending()
        self.pending = None
        return time.perf_counter() - t0


@runtime_checkable
class Loader(Protocol):
    """What every ``conf/loader/<name>.yaml`` ``_target_`` builds."""

    formats: ClassVar[tuple[str, ...]]  # checkpoint formats it reads (coldstart format names), preferred first

    def load(self, checkpoint_dir: Path, device: torch.device) -> LoadResult: ...

    def check_available(self) -> None: ...


@runtime_checkable
class TieredLoader(Protocol):
    """A loader with its own DRAM tier: the ``hot`` cache state stages the checkpoint there first."""

    def stage_in_dram(self, checkpoint_dir: Path) -> Path: ...

    def unstage_from_dram(self, checkpoint_dir: Path) -> None: ...


@runtime_checkable
class PreparedLoader(Protocol):
    """A loader that measures this machine before timed loads (the native loader's read-path probe): the loading
    experiment calls ``prepare`` once per checkpoint before any trial and records what it returns."""

    def prepare(self, checkpoint_dir: Path, device: torch.device) -> dict[str, object] | None: ...


@runtime_checkable
class RemoteTieredLoader(Protocol):
    """A loader that reads a remote URL and keeps its own local copies: the ``remote`` cache state drops them."""

    def drop_remote_copies(self, url: str) -> None: ...


class BaseLoader:
    """Shared helpers: optional-package checks and shard discovery."""

    formats: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules this loader needs
    extra: ClassVar[str] = ""  # the pyproject extra that installs them

    def check_available(self) -> None:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        hint = f"pip install 'coldstart[{self.extra}]'" if self.extra else f"pip install {' '.join(self.requires)}"
        if missing:
            raise LoaderUnavailableError(f"{type(self).__name__} needs {', '.join(missing)}: {hint}")
        for module in self.requires:  # installed is not enough: a native extension may fail to load
            try:
                importlib.import_module(module)
            except (ImportError, OSError) as exc:
                raise LoaderUnavailableError(f"{type(self).__name__}: {module} is installed but does not import "
                                             f"({exc}); reinstall it: {hint}") from exc


def shard_files(checkpoint_dir: Path, index_name: str, single_names: tuple[str, ...], suffix: str) -> list[Path]:
    """The data files of an HF-style checkpoint: from its index if present, else the single file."""
    index = checkpoint_dir / index_name
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
        return [checkpoint_dir / n for n in names]
    for name in single_names:
        if (checkpoint_dir / name).exists():
            return [checkpoint_dir / name]
    found = sorted(checkpoint_dir.glob(f"*{suffix}"))
    if not found:
        raise UnsupportedCheckpointError(f"no {suffix} files (nor {index_name}) in {checkpoint_dir}")
    return found
