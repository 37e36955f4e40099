"""The declared dependencies cover what the packages import, and the Makefile's torch is one the project accepts."""

from __future__ import annotations

import ast
import re
import sys

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from harness.paths import repo_root

ROOT = repo_root()
PACKAGES = ("harness", "loaders", "engines", "runtimes", "schedulers", "placement", "experiments")
# import name → distribution name, where they differ
DIST = {"yaml": "pyyaml", "hydra": "hydra-core"}


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_makefile_torch_satisfies_the_declared_range() -> None:
    pinned = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned, "the Makefile pins torch with TORCH_SPEC ?= torch==X"
    (torch,) = [Requirement(d) for d in _pyproject()["project"]["dependencies"] if Requirement(d).name == "torch"]
    assert torch.specifier.contains(Version(pinned.group(1)))


def test_every_third_party_import_is_declared() -> None:
    project = _pyproject()["project"]
    declared = {Requirement(d).name.lower() for d in project["dependencies"]}
    declared |= {Requirement(d).name.lower() for ds in project["optional-dependencies"].values() for d in ds}
    stdlib = set(sys.stdlib_module_names)
    missing = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                for name in names:
                    top = name.split(".")[0]
                    if top in stdlib or top in PACKAGES or top == "__future__":
                        continue
                    dist = DIST.get(top, top).replace("_", "-").lower()
                    if dist not in declared:
                        missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
