"""Where a real model's files are: a directory the user names, or a snapshot of the Hugging Face cache.

A source is only ever read. Resolving it finds the weight files the way ``from_pretrained`` does (a safetensors
index or ``model.safetensors``, else a ``.bin`` index or ``pytorch_model.bin``), checks every file a run reads with
the native format's rule (``loaders.native.format.member``: a regular file inside the directory, or, in the Hugging
Face cache, a link from ``snapshots/<rev>/`` to a blob of the same repository; FIFOs, devices and links elsewhere
refused), and computes a fingerprint of those files (name, size, mtime, ctime, inode, device of each resolved file)
that keys everything derived from them: the manifest and the converted formats in the checkpoint store.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from loaders.native.format import HUB_REPO_PREFIXES, MAX_INDEX_BYTES, load_json, member, read_member

SOURCE_KINDS = ("zoo", "local", "hf_cache")  # the ``model_source`` column
ST_INDEX = "model.safetensors.index.json"
ST_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
# What a tokenizer can be made of (transformers' AutoTokenizer reads whichever are present).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
# What model.download=true fetches: configs, tokenizer and one weight format (safetensors first, as from_pretrained).
DOWNLOAD_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
DOWNLOAD_BIN_PATTERNS = ("*.json", "*.txt", "*.model", "pytorch_model*.bin")


class ModelSourceError(ValueError):
    """A real model's source cannot be used as given (each subclass says which key to change)."""


class SourceNotFoundError(ModelSourceError):
    """``model.path`` does not exist or is not a directory; or neither ``path`` nor ``hf_id`` is set."""


class HubCacheMissError(ModelSourceError):
    """``model.hf_id`` (at ``revision``) is not in the local Hugging Face cache and ``model.download`` is false."""


class NoWeightsError(ModelSourceError):
    """The directory has no weights in a layout ``from_pretrained`` reads (or no ``config.json``)."""


class BadWeightIndexError(ModelSourceError):
    """A weight index (``*.index.json``) is malformed or names a file that is not a plain name in the directory."""


def hub_cache_dir(cache_dir: str | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (read from the environment now, not when huggingface_hub was imported)."""
    if cache_dir:
        return Path(os.path.expanduser(cache_dir))
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def _stamp(name: str, st: os.stat_result) -> list[Any]:
    return [name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


@dataclass(frozen=True)
class ModelSource:
    """A resolved real model: the directory read (for the Hugging Face cache, the snapshot), its weight files in
    order and their format (``safetensors`` or ``torch_bin``), and where it came from."""

    kind: str  # "local" | "hf_cache"
    path: Path  # absolute, as named (links not resolved, so the hub rule can see snapshots/<rev>/)
    weights: tuple[str, ...]
    format: str  # "safetensors" | "torch_bin"
    index: str | None  # the weight index file, if the weights are sharded with one
    hf_id: str | None = None
    revision: str | None = None  # the snapshot's commit for hf_cache

    @property
    def tokenizer_files(self) -> tuple[str, ...]:
        return tuple(n for n in TOKENIZER_FILES if os.path.lexists(self.path / n))

    @property
    def has_tokenizer(self) -> bool:
        names = set(self.tokenizer_files)
        return bool(names & {"tokenizer.json", "tokenizer.model", "spiece.model", "vocab.txt"}) or \
            {"vocab.json", "merges.txt"} <= names

    def files(self) -> list[str]:
        """Every file of the directory a run reads: config, weight index, weights, generation config, tokenizer."""
        names = [CONFIG, *([self.index] if self.index else []), *self.weights]
        if os.path.lexists(self.path / GENERATION_CONFIG):
            names.append(GENERATION_CONFIG)
        return names + list(self.tokenizer_files)

    def resolved(self, name: str) -> tuple[Path, os.stat_result]:
        """The file to read for ``name`` and its stat, checked by the native format's rule (never opened here)."""
        return member(self.path, name)

    def check(self) -> None:
        """Every file a run reads is a regular file inside the directory (or a blob of its hub repository)."""
        for name in self.files():
            self.resolved(name)

    def fingerprint(self) -> str:
        """xxh3-64 (hex) of what identifies the files' contents: each resolved file's name, size, mtime, ctime,
        inode and device. A changed, replaced or touched file changes it; a tokenizer file does not count (it
        changes no tensor)."""
        names = [CONFIG, *([self.index] if self.index else []), *self.weights]
        stamps = [_stamp(n, self.resolved(n)[1]) for n in names]
        return xxhash.xxh3_64_hexdigest(json.dumps([self.format, stamps]).encode())

    def config_json(self) -> dict[str, Any]:
        raw, _, _ = read_member(self.path, CONFIG, MAX_INDEX_BYTES)
        doc = load_json(raw, str(self.path / CONFIG))
        if not isinstance(doc, dict):
            raise NoWeightsError(f"{self.path / CONFIG} is not a JSON object")
        return doc

    def describe(self) -> dict[str, Any]:
        """The result columns that say where the model came from."""
        return {"model_source": self.kind, "model_path": str(self.path), "hf_id": self.hf_id or "",
                "hf_revision": self.revision or ""}


def _index_files(directory: Path, index: str) -> tuple[str, ...]:
    raw, _, _ = read_member(directory, index, MAX_INDEX_BYTES)
    try:
        weight_map = json.loads(raw)["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        names, problem = [], f"{type(exc).__name__}: {exc}"
    else:
        problem = "" if names and all(isinstance(n, str) for n in names) else "an empty or non-string map"
    if problem:
        raise BadWeightIndexError(f"{directory / index}: not a weight index (needs a non-empty \"weight_map\" of "
                                  f"tensor → file): {problem}")
    for n in names:
        if not _PLAIN_NAME.match(n) or n in (".", ".."):
            raise BadWeightIndexError(f"{directory / index} names {n!r}, which is not a plain file name in the "
                                      "directory (path separators and '..' are refused)")
    return tuple(names)


def find_weights(directory: Path) -> tuple[str, str | None, tuple[str, ...]]:
    """(format, index, weight files) of a directory, preferring safetensors as ``from_pretrained`` does."""
    for fmt, index, single in (("safetensors", ST_INDEX, ST_SINGLE), ("torch_bin", BIN_INDEX, BIN_SINGLE)):
        if os.path.lexists(directory / index):
            return fmt, index, _index_files(directory, index)
        if os.path.lexists(directory / single):
            return fmt, None, (single,)
    present = sorted(p.name for p in directory.iterdir())[:12] if directory.is_dir() else []
    raise NoWeightsError(f"{directory}: no weights in a layout from_pretrained reads ({ST_INDEX}, {ST_SINGLE}, "
                         f"{BIN_INDEX} or {BIN_SINGLE}); it holds {present}")


def _hub_snapshot(hf_id: str, revision: str | None, download: bool, cache_dir: Path) -> Path:
    """The snapshot directory of ``hf_id`` at ``revision`` in the cache, through huggingface_hub's own cache API
    (``local_files_only``: nothing is fetched); with ``download`` it fetches what is missing first."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if download:
        path = Path(snapshot_download(hf_id, revision=revision, cache_dir=str(cache_dir),
                                      allow_patterns=list(DOWNLOAD_PATTERNS)))
        try:
            find_weights(path)
        except NoWeightsError:  # a repository without safetensors: its .bin files
            path = Path(snapshot_download(hf_id, revision=revision, cache_dir=str(cache_dir),
                                          allow_patterns=list(DOWNLOAD_BIN_PATTERNS)))
        return path
    try:
        return Path(snapshot_download(hf_id, revision=revision, cache_dir=str(cache_dir), local_files_only=True))
    except LocalEntryNotFoundError:
        repo = cache_dir / f"models--{hf_id.replace('/', '--')}"
        have = sorted(p.name for p in (repo / "snapshots").iterdir()) if (repo / "snapshots").is_dir() else []
        raise HubCacheMissError(f"model.hf_id={hf_id} (revision {revision or 'main'}) is not in the Hugging Face "
                                f"cache {cache_dir} (snapshots there: {have or 'none'}); nothing is downloaded "
                                "unless asked: set model.download=true, or point HF_HOME / model.cache_dir at the "
                                "cache that has it") from None


def resolve(path: str | None = None, hf_id: str | None = None, revision: str | None = None,
            download: bool = False, cache_dir: str | None = None) -> ModelSource:
    """The source a real model option names: ``path`` (a directory, read in place) or ``hf_id`` (+ ``revision``)
    from the Hugging Face cache. Every file a run would read is checked before anything else happens."""
    if bool(path) == bool(hf_id):
        raise SourceNotFoundError("a real model needs exactly one of model.path=DIR (a directory) or "
                                  f"model.hf_id=org/name (the Hugging Face cache); got path={path!r}, hf_id={hf_id!r}")
    if path:
        directory = Path(os.path.abspath(os.path.expanduser(str(path))))
        if not directory.is_dir():
            what = "not a directory" if directory.exists() else "no such directory"
            raise SourceNotFoundError(f"model.path={path}: {what}")
        kind, rev = "local", None
    else:
        assert hf_id is not None
        if hf_id.count("/") != 1 or not all(_PLAIN_NAME.match(p) and not p.startswith(".")
                                            for p in hf_id.split("/")):
            raise SourceNotFoundError(f"model.hf_id={hf_id!r} is not a repository id of the form org/name")
        directory = _hub_snapshot(hf_id, revision, download, hub_cache_dir(cache_dir))
        kind, rev = "hf_cache", directory.name
    if not os.path.lexists(directory / CONFIG):
        raise NoWeightsError(f"{directory} has no {CONFIG}: a real model's architecture comes from it")
    fmt, index, weights = find_weights(directory)
    source = ModelSource(kind, directory, weights, fmt, index, hf_id, rev)
    source.check()
    return source


def default_name(source: ModelSource) -> str:
    """A readable model name: the repository's name for the hub cache (also for a path into a snapshot), else the
    directory's name."""
    if source.hf_id:
        return source.hf_id.split("/", 1)[1]
    parts = source.path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith(HUB_REPO_PREFIXES):
        return parts[-3].split("--")[-1]
    return source.path.name
