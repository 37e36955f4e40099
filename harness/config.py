"""Config access, through Hydra composition only: the app's config, and options of a group by name with the run's
per-option overrides (``loader_args.native.threads=8``). No other module opens a file under ``conf/``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# an absolute path: Hydra resolves a relative one as a Python package when started from a console script
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Groups whose options an experiment may list (``loaders=[...]``, policy lists, ``models=[...]``): each has an open
# ``<group>_args`` node, so ``<group>_args.<option>.<key>=value`` overrides one listed option on the command line.
ARG_GROUPS = ("model", "loader", "runtime", "engine", "scheduler", "keepalive", "placement", "routing", "topology")


class ConfigError(ValueError):
    """A configuration that would not do what was typed: an unknown option or key, or an override nothing reads."""


@dataclass
class RunRecord:
    """What the running experiment composed, for its run folder: the groups it reads as one composed option
    (``check_args``' singles) and every option it listed, as it ran (``listed``: the YAML, the entry's args, the
    run's ``<group>_args``, merged)."""

    singles: set[str] | None = None
    options: list[dict[str, Any]] = field(default_factory=list)

    def add(self, group: str, name: str, entry: dict[str, Any], config: DictConfig) -> None:
        resolved = OmegaConf.to_container(config, resolve=True)
        row = {"group": group, "name": name, "entry_args": entry, "config": resolved}
        if row not in self.options:
            self.options.append(row)


_RECORDS: list[RunRecord] = []


@contextmanager
def recording() -> Iterator[RunRecord]:
    """Record what the code inside composes (``listed`` options, ``check_args`` singles) into a :class:`RunRecord`."""
    record = RunRecord()
    _RECORDS.append(record)
    try:
        yield record
    finally:
        _RECORDS.remove(record)


SLUG_MAX = 48


def slug(text: str) -> str:
    """A short, shell-safe folder name for a job's overrides (``hydra.sweep.subdir``): letters, digits and ``._=-``
    only (no glob or quote characters), at most ``SLUG_MAX`` characters, the rest replaced by a hash of the whole.
    The full overrides stay in the job's ``.hydra/overrides.yaml`` and ``config.yaml``."""
    import hashlib
    import re

    bare = re.sub(r"[\[\]{}()'\" ]", "", str(text)).replace(",", "_")  # list brackets and quotes go
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "-", bare).strip("_-")
    if len(safe) <= SLUG_MAX:
        return safe
    digest = hashlib.sha1(str(text).encode()).hexdigest()[:8]
    return f"{safe[: SLUG_MAX - 9].rstrip('_')}_{digest}"


def register_schema() -> None:
    """Put the open ``<group>_args`` nodes in Hydra's ConfigStore (``conf/config.yaml`` lists them as defaults).

    Hydra composes in struct mode, where ``loader_args.native.threads=8`` on an empty node needs a ``+``; these nodes
    are open so the documented syntax works as typed. What they may hold is checked by :func:`check_args`.
    """
    if not OmegaConf.has_resolver("coldstart_slug"):
        OmegaConf.register_new_resolver("coldstart_slug", slug)
    node = OmegaConf.create({f"{g}_args": {} for g in ARG_GROUPS})
    for g in ARG_GROUPS:
        OmegaConf.set_struct(node[f"{g}_args"], False)
    ConfigStore.instance().store(name="option_args", node=node)


@contextmanager
def _hydra() -> Iterator[None]:
    """Hydra's compose API, inside a running app (its search path) or on its own (``conf/``)."""
    register_schema()
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def compose_config(overrides: Iterable[str] = (), *, hydra_node: bool = False) -> DictConfig:
    """The app's config as ``coldstart OVERRIDES...`` composes it (for tests and tools; the app uses hydra.main)."""
    with _hydra():
        try:
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_node)
        except HydraException as exc:
            raise ConfigError(str(exc)) from None


def searchpath() -> list[str]:
    """The running app's ``hydra.searchpath`` (a user's own config directory, e.g. real-model options). Hydra applies
    it to the app's config only, so every option composed here passes it on (empty outside the app)."""
    if not HydraConfig.initialized():
        return []
    return [str(p) for p in (HydraConfig.get().searchpath or [])]


def _searchpath_options(group: str) -> set[str]:
    """Option names of ``group`` in the search path's ``file://`` directories (``<dir>/<group>/<name>.yaml``) and
    ``pkg://`` packages, as Hydra's file and package config sources name them."""
    import importlib.resources

    out: set[str] = set()
    for entry in searchpath():
        if entry.startswith("file://"):
            folder = Path(entry.removeprefix("file://")) / group
            out |= {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()
        elif entry.startswith("pkg://"):
            try:
                folder_t = importlib.resources.files(entry.removeprefix("pkg://").replace("/", ".")) / group
                out |= {p.name.removesuffix(".yaml") for p in folder_t.iterdir() if p.name.endswith(".yaml")}
            except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
                continue
    return out


def options(group: str) -> list[str]:
    """The option names of a config group, as Hydra sees them (files under ``conf/<group>/``, stored configs, and
    the app's ``hydra.searchpath``)."""
    with _hydra():
        return sorted(set(GlobalHydra.instance().config_loader().get_group_options(group))
                      | _searchpath_options(group))


def groups() -> list[str]:
    """The top-level config groups (``model``, ``loader``…, ``hydra``), as Hydra sees them."""
    with _hydra():
        return sorted(GlobalHydra.instance().config_loader().list_groups(""))


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a nested mapping (``{a: {b: 1}}`` → ``["a.b"]``)."""
    if not isinstance(node, Mapping | DictConfig) or not node:
        return [prefix] if prefix else []
    return [k for key, v in node.items() for k in _keys(v, f"{prefix}.{key}" if prefix else str(key))]


def option(group: str, name: str, overrides: Mapping[str, Any] | DictConfig | None = None) -> DictConfig:
    """``conf/<group>/<name>`` composed by Hydra, with ``overrides`` (nested key → value) merged in.

    An unknown option lists the group's options; an override of a key the option does not have lists its keys.
    The result is a fresh, writable copy.
    """
    known = options(group)
    if name not in known:
        raise ConfigError(f"{group}={name!r} is not an option; choose one of {known}")
    paths = searchpath()
    with _hydra():
        try:
            composed = compose(config_name=None, overrides=[*([f"hydra.searchpath=[{','.join(paths)}]"] if paths
                                                              else []), f"+{group}={name}"])
        except HydraException as exc:
            raise ConfigError(f"{group}={name!r}: {exc}") from None
    node = composed[group]
    assert isinstance(node, DictConfig)
    if overrides:
        OmegaConf.set_struct(node, True)
        try:
            node = OmegaConf.merge(node, overrides)
        except OmegaConfBaseException as exc:
            key = str(getattr(exc, "full_key", "?")).removeprefix(f"{group}.")
            raise ConfigError(f"{group} option {name!r} has no key {key!r} (overrides {dict(overrides)}); its keys: "
                              f"{_keys(node)}") from None
    OmegaConf.set_struct(node, False)
    return node


def option_dict(group: str, name: str, overrides: Mapping[str, Any] | DictConfig | None = None) -> dict[str, Any]:
    """:func:`option` as a plain, resolved dict (what a trial process or a worker receives)."""
    out = OmegaConf.to_container(option(group, name, overrides), resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def composed_option(cfg: DictConfig, group: str) -> str:
    """The option name a composed ``cfg[group]`` came from (``scheduler: serverlessllm``): Hydra's choice inside the
    app, else the one option of the group with the same ``_target_``; the class name when none or several match."""
    if HydraConfig.initialized():
        chosen = HydraConfig.get().runtime.choices.get(group)
        if chosen:
            return str(chosen)
    target = str(cfg[group].get("_target_", ""))
    matches = [name for name in options(group) if str(option(group, name).get("_target_", "")) == target]
    return matches[0] if len(matches) == 1 else target.rsplit(".", 1)[-1]


def name_list(cfg: DictConfig, key: str, default: Iterable[str] = ()) -> list[str]:
    """A list key's entries as strings (``loaders``, ``runtimes``, ``cache_states``…): a bare word (``loaders=native``)
    is a one-element list, never its characters; null or absent gives ``default``."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return [str(v) for v in default]
    if isinstance(value, str | int | float):
        return [str(value)]
    if not isinstance(value, ListConfig | list | tuple):
        raise ConfigError(f"{key}={value!r}: expected a list such as {key}=[a,b]")
    return [str(v) for v in value]


def run_args(cfg: DictConfig, group: str) -> dict[str, Any]:
    """The run's ``<group>_args``: option name → overrides typed for it (``loader_args.native.threads=8``)."""
    node = cfg.get(f"{group}_args")
    if not node:
        return {}
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def listed(cfg: DictConfig, group: str, name: str,
           entry_args: Mapping[str, Any] | DictConfig | None = None) -> DictConfig:
    """An option an experiment lists, in order of precedence: its YAML, then the experiment entry's own args (e.g. a
    keep-alive policy entry's ``keepalive_args``), then the run's ``<group>_args.<name>``.

    A run override of a key an entry sets on purpose would silently merge entries that differ on it (two keep-alive
    windows both named by their window): that is an error naming the entry's key.
    """
    mine: dict[str, Any] = run_args(cfg, group).get(name) or {}
    raw = OmegaConf.to_container(entry_args, resolve=True) if isinstance(entry_args, DictConfig) else entry_args
    theirs: dict[str, Any] = {str(k): v for k, v in raw.items()} if isinstance(raw, Mapping) else {}
    clash = sorted(set(_keys(mine)) & set(_keys(theirs)))
    if clash:
        raise ConfigError(f"{group}_args.{name} overrides {clash}, which this experiment's list sets per entry "
                          f"({theirs}); change the entries instead")
    merged = OmegaConf.merge(OmegaConf.create(theirs), OmegaConf.create(mine))
    assert isinstance(merged, DictConfig)
    node = option(group, name, merged)
    for record in _RECORDS:
        record.add(group, name, theirs, node)
    return node


def _typed_groups() -> list[tuple[str, str]]:
    """(group, override) for every command-line override that selects or changes an option of an ARG_GROUP."""
    if not HydraConfig.initialized():
        return []
    out = []
    for ov in HydraConfig.get().overrides.task:
        key = ov.lstrip("+~").split("=", 1)[0]
        group = key.split(".", 1)[0].split("@", 1)[0]
        if group in ARG_GROUPS:
            out.append((group, ov))
    return out


def check_args(cfg: DictConfig, lists: Mapping[str, Iterable[str]], singles: Iterable[str] = ()) -> None:
    """Fail before anything runs when an override would be ignored.

    ``lists``: group → the option names this experiment will compose by name (``loaders=[...]``, policy entries);
    ``singles``: the groups it reads as ``cfg.<group>`` (the one option the defaults list selected). Every
    ``<group>_args.<name>`` must name a listed option and a key it has; a command-line ``group=...`` or
    ``group.key=...`` must be for a group the experiment reads as a single option.
    """
    lists = {g: [str(n) for n in names] for g, names in lists.items()}
    singles = set(singles)
    for record in _RECORDS:
        record.singles = (record.singles or set()) | singles
    for group in ARG_GROUPS:
        for name, overrides in run_args(cfg, group).items():
            used = lists.get(group)
            if not used:
                raise ConfigError(f"{group}_args.{name}: experiment {cfg.experiment.name} lists no {group} options, "
                                  f"so these overrides would be ignored"
                                  + (f"; it uses the single {group}: override {group}.<key>=..." if group in singles
                                     else ""))
            if name not in used:
                raise ConfigError(f"{group}_args.{name}: {name!r} is not one of the {group} options this run uses "
                                  f"({used}); the overrides would be ignored")
            option(group, name, overrides)  # every key must exist
    for group, ov in _typed_groups():
        if group not in singles:
            hint = (f"; it composes the {group} options {lists[group]} by name: override one with "
                    f"{group}_args.<option>.<key>=..." if lists.get(group) else "")
            raise ConfigError(f"override {ov!r} would be ignored: experiment {cfg.experiment.name} does not read "
                              f"the single {group} option{hint}")


def instantiate_option(group: str, name: str, overrides: Mapping[str, Any] | DictConfig | None = None,
                       **kwargs: Any) -> Any:
    """Instantiate :func:`option` (``_target_`` picks the class; keyword arguments are passed on)."""
    return instantiate(option(group, name, overrides), **kwargs)
