"""Reading config options by name (for experiments that take lists of options, e.g. ``loaders=[...]``)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from harness.paths import repo_root


def conf_dir() -> Any:
    return repo_root() / "conf"


def options(group: str) -> list[str]:
    """The option names of a config group (file stems under conf/<group>/)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def load_option(group: str, name: str) -> dict[str, Any]:
    """One option of a group as a plain dict; an unknown name lists the allowed ones."""
    path = conf_dir() / group / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown {group} {name!r}; choose from {options(group)}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(cfg, dict)
    return {str(k): v for k, v in cfg.items()}
