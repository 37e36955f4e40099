"""Where things live: the repository root, the shared data folder beside it, the checkpoint cache."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package runs from (conf/ and results/ live here)."""
    return Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared data folder: $COLDSTART_SHARED, else ``../shared`` beside the checkout."""
    env = os.environ.get("COLDSTART_SHARED")
    return Path(env).expanduser() if env else repo_root().parent / "shared"


def shared_file(*parts: str) -> Path:
    """A file under the shared folder, with a clear error when it is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the shared data folder is expected beside the checkout "
            f"(or set COLDSTART_SHARED to its location)"
        )
    return path
