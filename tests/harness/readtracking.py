"""Which configuration keys a run reads: DictConfig's attribute, item and ``get`` access recorded while it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, OmegaConf

READS = ("__getattr__", "__getitem__", "get")
WRITES = ("__setattr__", "__setitem__")


@contextmanager
def tracking_reads(cfg: DictConfig) -> Iterator[set[str]]:
    """Record the full key (``workload.rps``) of every value read from ``cfg`` while the block runs: from any node of
    its tree or of a whole copy of it (a suite's per-cell copy has the same top-level keys), not from other configs
    (an option composed alone, a copy of one node), and not a key the code wrote on a copy before reading it back (a
    suite's ``sub.model = <listed model>`` is not a read of the run's ``model``)."""
    top = set(cfg.keys())
    reads: set[str] = set()
    written: set[tuple[int, str]] = set()
    originals = {name: getattr(DictConfig, name) for name in (*READS, *WRITES)}

    def full_key(node: DictConfig, key: Any) -> tuple[int, str] | None:
        if not isinstance(key, str) or key.startswith("_"):
            return None
        root = node._get_root()
        if not isinstance(root, DictConfig) or not top <= set(root.keys()):
            return None
        return id(root), node._get_full_key(key)

    def read(name: str) -> Any:
        original = originals[name]

        def wrapper(self: DictConfig, key: Any, *args: Any, **kwargs: Any) -> Any:
            found = full_key(self, key)
            if found is not None:
                root, k = found
                if not any((root, k[: len(w)]) == (root, w) and k[len(w): len(w) + 1] in ("", ".")
                           for r, w in written if r == root):
                    reads.add(k)
            return original(self, key, *args, **kwargs)

        return wrapper

    def write(name: str) -> Any:
        original = originals[name]

        def wrapper(self: DictConfig, key: Any, value: Any) -> Any:
            found = full_key(self, key)
            if found is not None:
                written.add(found)
            return original(self, key, value)

        return wrapper

    select = OmegaConf.select

    def selected(node: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(node, DictConfig):
            first, _, rest = key.partition(".")
            found = full_key(node, first)
            if found is not None:
                reads.add(f"{found[1]}.{rest}" if rest else found[1])
        return select(node, key, *args, **kwargs)

    try:
        for name in READS:
            setattr(DictConfig, name, read(name))
        for name in WRITES:
            setattr(DictConfig, name, write(name))
        OmegaConf.select = selected  # type: ignore[method-assign]
        yield reads
    finally:
        for name, original in originals.items():
            setattr(DictConfig, name, original)
        OmegaConf.select = select  # type: ignore[method-assign]


def roots(reads: set[str]) -> set[str]:
    """The top-level keys among ``reads``."""
    return {r.split(".", 1)[0] for r in reads if r}
