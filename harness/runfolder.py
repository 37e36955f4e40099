"""A run folder says what ran: ``config.yaml`` holds the keys the experiment read (not the defaults of groups it does
not read) and ``options``, every listed option as it ran; ``coldstart --from-run DIR`` repeats a run from its folder."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from harness.config import ARG_GROUPS, ConfigError, RunRecord, compose_config, listed, run_args
from harness.overrides import UNIVERSAL, own_keys

# Keys of a run that say where its files went, not what was measured: never pinned when a run is repeated.
WHERE = ("results_dir",)
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"  # what was typed (Hydra writes it in every run and job folder)


def read_keys(cfg: DictConfig, record: RunRecord | None) -> set[str]:
    """The top-level keys this run read: what every run reads, the experiment's own keys, what it declares in
    ``experiment.reads``, the ``<group>_args`` nodes, and the groups it read as one composed option (all of them when
    the experiment recorded none)."""
    reads = {str(k) for k in (cfg.experiment.get("reads") or [])}
    keep = set(UNIVERSAL) | own_keys(cfg) | reads | {f"{g}_args" for g in ARG_GROUPS}
    singles = None if record is None else record.singles
    keep |= set(ARG_GROUPS) if singles is None else set(singles)
    return {k for k in keep if k in cfg}


def options_as_ran(record: RunRecord) -> dict[str, dict[str, Any]]:
    """``group → name → config`` of every listed option; one name listed with different configs (keep-alive windows,
    ablation variants) gets ``name``, ``name#2``…"""
    out: dict[str, dict[str, Any]] = {}
    for row in record.options:
        names = out.setdefault(row["group"], {})
        key, k = row["name"], 1
        while key in names and names[key] != row["config"]:
            k += 1
            key = f"{row['name']}#{k}"
        names[key] = row["config"]
    return out


def describe(cfg: DictConfig, record: RunRecord | None) -> dict[str, Any]:
    """The run's ``config.yaml``: the keys it read, resolved, and ``options`` (its listed options as they ran) with
    ``option_entries`` (which entry args each came with, so a repeat can tell them from the run's overrides)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    keep = read_keys(cfg, record)
    out: dict[str, Any] = {k: v for k, v in resolved.items() if k in keep}
    if record is not None and record.options:
        out["options"] = options_as_ran(record)
        out["option_entries"] = [{k: row[k] for k in ("group", "name", "entry_args")} for row in record.options]
    return out


def write_description(path: Path, cfg: DictConfig, record: RunRecord | None) -> None:
    path.write_text(yaml.safe_dump(describe(cfg, record), sort_keys=False, allow_unicode=True))


# -- repeating a run ----------------------------------------------------------------------------------------------


def render(value: Any) -> str:
    """``value`` in Hydra's override grammar (strings quoted, so ``'16'`` stays a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{render(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) as a command-line value")


def _container(node: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _diff(recorded: Mapping[str, Any], now: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """Leaf keys (dotted) whose recorded value differs from today's composition: key → the recorded value."""
    skip = tuple(skip)
    a, b = _leaves(recorded), _leaves(now)
    out = {}
    for key, value in a.items():
        if any(key == s or key.startswith(s + ".") for s in skip):
            continue
        if key not in b:
            raise ConfigError(f"cannot repeat the run: its key {key!r} no longer exists in conf/")
        if b[key] != value:
            out[key] = value
    return out


def repeat_overrides(run_dir: Path, extra: Iterable[str] = ()) -> list[str]:
    """The overrides that compose ``run_dir``'s run again as it ran: what was typed, then every key whose value
    conf/ now gives differently (its defaults changed since), pinned to the recorded value; ``extra`` last."""
    typed_file = run_dir / OVERRIDES_FILE
    config_file = run_dir / "config.yaml"
    if not config_file.exists() or not typed_file.exists():
        raise ConfigError(f"--from-run {run_dir}: not a run folder (needs config.yaml and {OVERRIDES_FILE})")
    typed = [str(t) for t in (yaml.safe_load(typed_file.read_text()) or [])]
    recorded = yaml.safe_load(config_file.read_text()) or {}
    extra = list(extra)
    resolved = _container(compose_config([*typed, *extra]))
    extra_keys = [e.lstrip("+~").split("=", 1)[0] for e in extra]
    skip = [*WHERE, "options", "option_entries", *extra_keys]
    pins = {k: v for k, v in _diff({k: v for k, v in recorded.items() if k not in skip}, resolved, skip).items()}
    out = [*typed, *(f"{k}={render(v)}" for k, v in pins.items())]
    out += _option_pins(recorded, compose_config(out + extra), extra_keys)
    return out + extra


def _option_pins(recorded: Mapping[str, Any], now: DictConfig, extra_keys: list[str]) -> list[str]:
    """``<group>_args.<name>.<key>=value`` for each key of a listed option that conf/ now gives differently; a key an
    experiment entry sets that changed means the experiment file changed: that cannot be repeated here."""
    configs = recorded.get("options") or {}
    pins: dict[str, Any] = {}
    for row in recorded.get("option_entries") or []:
        group, name, entry = str(row["group"]), str(row["name"]), dict(row.get("entry_args") or {})
        candidates = [c for key, c in (configs.get(group) or {}).items() if key.split("#")[0] == name]
        current = _container(listed(now, group, name, entry))
        mine = run_args(now, group).get(name) or {}
        now_leaves = _leaves(current)
        best = min(candidates, default=None,
                   key=lambda c: sum(now_leaves.get(k, "<absent>") != v for k, v in _leaves(c).items()))
        if best is None:
            continue
        for key, value in _diff(best, current).items():
            if key in _leaves(entry) or key in _leaves(mine):
                raise ConfigError(f"cannot repeat the run: {group} option {name!r} key {key!r} was {value!r}, "
                                  f"an experiment entry or override now gives another value")
            full = f"{group}_args.{name}.{key}"
            if any(full == e or full.startswith(e + ".") for e in extra_keys):
                continue
            if pins.get(full, value) != value:
                raise ConfigError(f"cannot repeat the run: {full} differed between its entries")
            pins[full] = value
    return [f"{k}={render(v)}" for k, v in pins.items()]


def differences(run_dir: Path, repeated: DictConfig, record: RunRecord | None) -> list[str]:
    """The keys whose value in ``repeated`` (a run composed from ``repeat_overrides``) differs from ``run_dir``'s
    record (empty when it is the same configuration)."""
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    mine = describe(repeated, record)
    skip = (*WHERE, "option_entries")
    a = {k: v for k, v in _leaves({k: v for k, v in recorded.items() if k not in skip}).items()}
    b = {k: v for k, v in _leaves({k: v for k, v in mine.items() if k not in skip}).items()}
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))

