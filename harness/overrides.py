"""What was typed, checked before anything runs: every command-line override composes (each value of a sweep too),
has the type of the key it sets, and names something the experiment reads; Hydra's composition errors become one
line naming the key and what is allowed.

An experiment declares what it reads besides its own keys (``experiment.reads``: the top-level keys and groups of
``conf/config.yaml`` it uses) and which keys it sets itself per scenario (``experiment.sets``: key → what to change
instead). Everything else on the command line would be ignored, and is an error.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.config import ARG_GROUPS, ConfigError, compose_config, groups, options

# Keys every run reads (where results go, what is printed and logged, the experiment itself, Hydra's own).
UNIVERSAL = ("experiment", "results_dir", "progress", "smoke", "logger", "hydra")
ARGS_NODES = tuple(f"{g}_args" for g in ARG_GROUPS)  # checked against the listed options by check_args
# Extras that install Hydra plugins a user may select (``hydra/sweeper=optuna``).
PLUGIN_EXTRAS = {"optuna": "optuna", "submitit_local": "submitit", "submitit_slurm": "submitit",
                 "joblib": "joblib"}
MAX_JOBS_CHECKED = 64  # compositions a sweep's preflight may cost (each value of each sweep, once)


@dataclass(frozen=True)
class Typed:
    """One command-line override as Hydra parses it."""

    text: str        # as typed: ``trials=7``
    key: str         # ``trials``, ``loader_args.native.threads``, ``model``, ``hydra/sweeper``
    op: str          # "" (change) | "+" (add) | "++" (force add) | "~" (delete)
    values: tuple[str, ...]  # the value as text; a sweep's values in order
    sweep: bool
    hydra: bool      # a ``hydra.``/``hydra/`` override

    @property
    def root(self) -> str:
        """The top-level key or group it changes: ``workload`` for ``workload.rps``."""
        return re.split(r"[./@]", self.key, maxsplit=1)[0]

    def job(self, k: int = 0) -> str:
        """This override with its ``k``-th value (a sweep's value; the override itself otherwise)."""
        if not self.sweep:
            return self.text
        return f"{self.op}{self.key}={self.values[k]}"


def parse(words: Sequence[str]) -> list[Typed]:
    """Hydra's own parse of ``words``; a syntax error is a ConfigError naming the word."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    out = []
    for word in words:
        try:
            (o,) = parser.parse_overrides([word])
        except OverrideParseException as exc:
            raise ConfigError(f"{word!r} is not an override Hydra can read: {str(exc).splitlines()[0]}") from None
        op = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}.get(o.type, "")
        if o.is_sweep_override():
            try:
                values = tuple(o.sweep_string_iterator())
            except Exception:  # a sweep only a sweeper plugin expands (interval, glob): checked as Hydra runs it
                values = ()
        else:
            values = (word.split("=", 1)[1],) if "=" in word else ()
        out.append(Typed(word, o.key_or_group, op, values, o.is_sweep_override(), o.is_hydra_override()))
    return out


def jobs(typed: Sequence[Typed]) -> list[list[str]]:
    """The override lists whose composition proves every value: the first job (every sweep at its first value),
    then each further value of each sweep with the others at their first."""
    first = [t.job(0) for t in typed if not t.sweep or t.values]
    out = [first]
    for i, t in enumerate(typed):
        for k in range(1, len(t.values)):
            job = [u.job(k) if j == i else u.job(0) for j, u in enumerate(typed) if not u.sweep or u.values]
            out.append(job)
    return out[:MAX_JOBS_CHECKED]


def one_line(exc: Exception, words: Sequence[str]) -> str:
    """Hydra's multi-line composition error as one line naming the override and what is allowed."""
    text = str(exc)
    missing = re.search(r"Could not find '([\w/.-]+)/([^'/]+)'", text)
    if missing:
        group, name = missing.groups()
        if group.startswith("hydra/"):
            extra = PLUGIN_EXTRAS.get(name)
            how = (f"it comes with the {extra} extra: pip install -e '.[{extra}]'" if extra
                   else "no installed Hydra plugin provides it")
            return f"{group}={name}: {how}"
        allowed = re.findall(r"^\t(\S+)$", text, re.M) or options(group)
        return f"{group}={name} is not an option; choose one of {allowed}"
    struct = re.search(r"Could not override '([^']+)'", text)
    if struct:
        key = struct.group(1)
        typed = _typed(words, key)
        return f"{typed}: there is no key {key!r} in this experiment's configuration{_close(key, words, typed)}"
    append = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if append:
        key = append.group(1)
        return f"{_typed(words, key)}: {key!r} exists already: set it without '+'"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _typed(words: Sequence[str], key: str) -> str:
    return next((w for w in words if w.lstrip("+~").split("=", 1)[0] == key), key)


def _close(key: str, words: Sequence[str], typed: str) -> str:
    """A hint at keys of the same job's configuration (composed without the bad override) spelled like ``key``."""
    try:
        known = _leaf_keys(compose_config([w for w in words if w != typed]))
    except ConfigError:
        return ""
    near = difflib.get_close_matches(key, known, n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _leaf_keys(cfg: DictConfig) -> list[str]:
    """Every key of ``cfg`` (mappings and leaves), dotted, without resolving interpolations."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if prefix:
            out.append(prefix)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


@functools.cache
def base_keys() -> frozenset[str]:
    """The top-level keys and groups of ``conf/config.yaml``, without any experiment (its null groups included)."""
    cfg = compose_config(["~experiment"])
    return frozenset({str(k) for k in cfg} | set(groups()) | {"experiment", "hydra"})


def own_keys(cfg: DictConfig) -> set[str]:
    """The top-level keys the experiment's file adds (``trials``, ``bprr``, ``real``…): read by that experiment."""
    return {str(k) for k in cfg} - base_keys()


def _reads(cfg: DictConfig) -> set[str]:
    node = cfg.experiment.get("reads")
    return {str(k) for k in (node or [])}


def _sets(cfg: DictConfig) -> dict[str, str]:
    node = cfg.experiment.get("sets")
    raw = OmegaConf.to_container(node, resolve=True) if node else {}
    return {str(k): str(v) for k, v in (raw or {}).items()} if isinstance(raw, dict) else {}


def check_reads(cfg: DictConfig, typed: Iterable[Typed], baseline: DictConfig | None = None) -> None:
    """Every override must change something this experiment reads: one of its own keys (those of its file: of
    ``baseline``, the job composed without value overrides, so a ``+key=...`` is not one), a key or group it declares
    in ``experiment.reads``, or a key every run reads; not a key it sets itself (``experiment.sets``). The groups
    whose options an experiment may list (``loader``, ``model``…) are checked per run by ``check_args``."""
    name = cfg.experiment.name
    reads = _reads(cfg)
    own = own_keys(baseline if baseline is not None else cfg)
    sets = _sets(cfg)
    for t in typed:
        if t.hydra or t.root in ARGS_NODES or t.root in ARG_GROUPS:  # listed-option groups: check_args, per run
            continue
        for key, instead in sets.items():
            if t.key == key or t.key.startswith(key + "."):
                raise ConfigError(f"{t.text} would be ignored: experiment {name} sets {key} itself per scenario; "
                                  f"change {instead} instead")
        if t.root in UNIVERSAL or t.root in own or t.root in reads:
            continue
        read = sorted(reads | own)
        raise ConfigError(f"{t.text} would be ignored: experiment {name} does not read {t.root!r} "
                          f"(it reads {read})")


_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
          (list, "a list [a,b]"), (dict, "a mapping {k: v}"))


def _kind(value: Any) -> str:
    return next(name for kind, name in _KINDS if isinstance(value, kind))


def _fits(default: Any, value: Any) -> bool:
    """``value`` may replace ``default``: same kind (an int where a number goes; a bare word where a list goes, read as
    a one-element list); anything where the default is null or a string."""
    if default is None or value is None or isinstance(default, str):
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, list):
        return isinstance(value, list | str | int | float)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def check_types(baseline: DictConfig, typed: Iterable[Typed]) -> list[str]:
    """Each value override has the type of the key's value before it (``trials=abc`` where 5 was is an error naming
    the key); returns the keys that hold a list and were given a bare word (read as a one-element list)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    wrapped = []
    selections = set(group_selections(typed))
    for t in typed:
        if t.hydra or t.op == "~" or t.root in ARGS_NODES or not t.values or t in selections:
            continue
        node = OmegaConf.select(baseline, t.key, default="<absent>", throw_on_missing=False)
        if isinstance(node, str) and node == "<absent>":
            continue
        default = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
        for text in t.values:
            (o,) = parser.parse_overrides([f"{t.key}={text}"])
            value = o.value()
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value)
            if not _fits(default, value):
                raise ConfigError(f"{t.key}={text}: expected {_kind(default)}, like its default {default!r}")
            if isinstance(default, list) and not isinstance(value, list):
                wrapped.append(t.key)
    return wrapped


def as_lists(typed: Sequence[Typed], keys: Iterable[str]) -> list[str]:
    """The overrides as typed, with a bare word given to a list key written as a one-element list (``loaders=native``
    → ``loaders=[native]``; a sweep ``loaders=native,torch`` → ``loaders=[native],[torch]``)."""
    keys = set(keys)
    out = []
    for t in typed:
        if t.key in keys and t.values:
            out.append(f"{t.op}{t.key}=" + ",".join(v if v.startswith("[") else f"[{v}]" for v in t.values))
        else:
            out.append(t.text)
    return out


def group_selections(typed: Iterable[Typed]) -> list[Typed]:
    """The overrides that pick an option of a config group (``model=opt-1.3b``, ``experiment=...``)."""
    return [t for t in typed if not t.hydra and "." not in t.key and options(t.key.split("@")[0])]


def preflight(words: Sequence[str]) -> list[str]:
    """Compose every job ``words`` would run and check its overrides; the overrides to hand Hydra (bare words given
    to list keys written as lists). Raises ConfigError with one line on anything that would fail or be ignored."""
    typed = parse(words)
    for job in jobs(typed):
        try:
            cfg = compose_config(job, hydra_node=True)
        except ConfigError as exc:
            raise ConfigError(one_line(exc, job)) from None
        chosen = parse(job)
        # the job without its value overrides (Hydra's own, such as a search path for the user's options, stay)
        try:
            baseline = compose_config([t.text for t in chosen if t.hydra or t in group_selections(chosen)])
        except ConfigError as exc:
            raise ConfigError(one_line(exc, job)) from None
        check_reads(cfg, chosen, baseline)
        wrapped = check_types(baseline, chosen)
        if wrapped:
            typed_now = parse(as_lists(typed, wrapped))
            if typed_now != typed:
                typed = typed_now
    return [t.text for t in typed]
