"""Every ``coldstart ...`` command in the README and docs composes (sweeps: their first value), so the documented
keys and options exist; placeholders like ``<ts>`` are skipped."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.config import compose_config
from harness.paths import repo_root

DOCS = [repo_root() / "README.md", *sorted((repo_root() / "docs").glob("*.md"))]


def _commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            m = re.match(r"\s*(?:coldstart|PYTHONPATH=\. python -m harness)\s+(.*)", line)
            if not m or "<" in m.group(1) or m.group(1).startswith("--from-run"):  # a run folder: tests/harness
                continue
            out.append((f"{doc.name}: {line.strip()[:80]}", m.group(1).split(" #", 1)[0]))
    return out


COMMANDS = _commands()


def test_the_docs_have_commands() -> None:
    assert len(COMMANDS) > 30


@pytest.mark.parametrize("args", [c for _, c in COMMANDS], ids=[i for i, _ in COMMANDS])
def test_documented_command_composes(args: str) -> None:
    words = [w for w in shlex.split(args) if w not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(words)
    plain = []
    for o in parsed:
        if o.is_hydra_override():
            continue
        value = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else o.value()
        if o.is_sweep_override():
            plain.append(f"{o.get_key_element()}={value}")
        else:
            plain.append(o.input_line)
    cfg = compose_config(plain)
    assert cfg.experiment.name
