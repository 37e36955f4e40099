"""A real model as a model option: the user's checkpoint directory or a Hugging Face cache snapshot, read in place.

``conf/model/local.yaml``: ``coldstart model=local model.path=DIR`` or ``model=local model.hf_id=org/name``; a named
option in the user's own config directory (``hydra.searchpath``) works the same. Architecture, layers and sizes
come from ``config.json`` and the weight files' headers; tensors keep the names the files give them (a checkpoint
without the ``model.`` prefix, tied weights left out) and are mapped onto the architecture when the model is built,
as ``from_pretrained`` maps them. ``dtype=auto`` is the checkpoint's own dtype; any other dtype is a cast done once
when the store converts the files, and recorded.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.checkpoints import Checkpoint, CheckpointStore
from harness.realstore import conversion_path, converted, in_place
from harness.realweights import TensorRecord, WeightReader, read_records
from harness.sources import ModelSource, ModelSourceError, default_name, resolve
from harness.zoo import (
    AUTO_DTYPE,
    DTYPES,
    ModelSpec,
    TensorSpec,
    check_dtype,
    plain_config,
    set_config_dtype,
    tied_aliases,
)

OWN_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class TrustRemoteCodeError(ModelSourceError):
    """The directory's architecture is custom code, and ``model.trust_remote_code`` is false."""


class UnsupportedRealDtypeError(ModelSourceError):
    """A dtype the harness cannot make from a real checkpoint (int8 weight-only is a zoo-only axis)."""


class CheckpointTensorsError(ModelSourceError):
    """The files' tensors do not fit the architecture of ``config.json``: some missing, some extra."""


# Tokenizers per directory, loaded once per process (never pickled with a spec).
_TOKENIZERS: dict[Path, Any] = {}


@dataclass(frozen=True, eq=False)
class RealModel(ModelSpec):
    """A model spec whose architecture and weights are the user's files (see the module docstring).

    Exactly one of ``path`` and ``hf_id`` is set. ``name`` defaults to the directory's (or repository's) name;
    ``arch`` and ``hf_config`` are filled from ``config.json`` and cannot be given."""

    name: str = ""
    arch: str = ""
    path: str | None = None
    hf_id: str | None = None
    revision: str | None = None
    download: bool = False
    trust_remote_code: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.arch or self.hf_config:
            raise ModelSourceError("a real model's architecture comes from its config.json: do not set model.arch "
                                   "or model.hf_config")
        source = resolve(self.path, self.hf_id, self.revision, self.download, self.cache_dir)
        raw = source.config_json()
        cls = self._config_class(source, raw)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_fingerprint", source.fingerprint())
        object.__setattr__(self, "name", self.name or default_name(source))
        object.__setattr__(self, "arch", f"{cls.__module__}.{cls.__qualname__}")
        object.__setattr__(self, "hf_config", plain_config(raw))
        object.__setattr__(self, "reference_source", f"{source.kind}: {source.path}")

    # -- identity: one spec per source directory and version ------------------------------------------------
    def _key(self) -> tuple[Any, ...]:
        return (self.name, str(self.source.path), self.fingerprint, self.trust_remote_code)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RealModel) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}

    @property
    def source(self) -> ModelSource:
        src: ModelSource = self.__dict__["_source"]
        return src

    @property
    def fingerprint(self) -> str:
        fp: str = self.__dict__["_fingerprint"]
        return fp

    def _cached(self, key: str, make: Any) -> Any:
        full = f"_cache_{key}"
        if full not in self.__dict__:
            object.__setattr__(self, full, make())
        return self.__dict__[full]

    # -- architecture --------------------------------------------------------------------------------------
    def _config_class(self, source: ModelSource, raw: dict[str, Any]) -> type:
        from transformers import CONFIG_MAPPING

        model_type = raw.get("model_type")
        if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
            cls: type = CONFIG_MAPPING[model_type]
            return cls
        auto = raw.get("auto_map") or {}
        if not self.trust_remote_code:
            raise TrustRemoteCodeError(
                f"model.trust_remote_code is false and {source.path / 'config.json'} names an architecture "
                f"transformers does not ship (model_type {model_type!r}, auto_map {dict(auto) or 'none'}): set "
                "model.trust_remote_code=true to run the directory's own code, if you trust it")
        from transformers import AutoConfig

        return type(AutoConfig.from_pretrained(str(source.path), trust_remote_code=True, local_files_only=True))

    def auto_kwargs(self) -> dict[str, Any]:
        return {"trust_remote_code": True} if self.trust_remote_code else {}

    def config(self, dtype: str = AUTO_DTYPE) -> Any:
        if self.trust_remote_code:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(str(self.source.path), trust_remote_code=True, local_files_only=True)
        else:
            from transformers import CONFIG_MAPPING

            cfg = CONFIG_MAPPING[self.hf_config["model_type"]].from_dict(dict(self.hf_config))
        set_config_dtype(cfg, DTYPES[self.resolve_dtype(dtype)][1])
        return cfg

    def model_class(self) -> type:
        if not self.trust_remote_code:
            return super().model_class()
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        ref = (self.hf_config.get("auto_map") or {}).get("AutoModelForCausalLM")
        if not ref:
            raise TrustRemoteCodeError(f"{self.source.path / 'config.json'}: auto_map has no AutoModelForCausalLM")
        cls: type = get_class_from_dynamic_module(ref, str(self.source.path), local_files_only=True)
        return cls

    def variant(self, name: str, **hf_overrides: Any) -> ModelSpec:
        if self.trust_remote_code:
            raise TrustRemoteCodeError(f"model {self.name}: a variant of a remote-code architecture cannot be built "
                                       "(it needs the directory's code); turn the pool's warmup off")
        return super().variant(name, **hf_overrides)

    # -- tensors -------------------------------------------------------------------------------------------
    @property
    def records(self) -> list[TensorRecord]:
        """The files' tensors (names, stored dtypes, shapes), from the headers."""
        recs: list[TensorRecord] = self._cached("records", lambda: read_records(self.source))
        return recs

    @property
    def own_dtype(self) -> str:
        """The checkpoint's dtype: the floating dtype holding most of its bytes (``fp32``, ``fp16`` or ``bf16``)."""
        by = Counter[torch.dtype]()
        for r in self.records:
            if r.dtype.is_floating_point:
                by[r.dtype] += r.nbytes
        if not by:
            return "fp32"
        top = by.most_common(1)[0][0]
        if top not in OWN_NAMES:
            raise UnsupportedRealDtypeError(f"{self.source.path}: weights in {top}, which the dtype axis has no name "
                                            f"for; choose dtype= one of {sorted(OWN_NAMES.values())}")
        return OWN_NAMES[top]

    @property
    def source_dtype(self) -> str:
        """The stored floating dtypes, e.g. ``bf16`` or ``bf16+fp32`` (a checkpoint that mixes them)."""
        names = {OWN_NAMES.get(r.dtype, str(r.dtype).removeprefix("torch.")) for r in self.records
                 if r.dtype.is_floating_point}
        return "+".join(sorted(names)) or "none"

    def resolve_dtype(self, dtype: str) -> str:
        if dtype == AUTO_DTYPE:
            return self.own_dtype
        if dtype == "int8":
            raise UnsupportedRealDtypeError(f"dtype=int8 is the zoo's synthetic weight-only axis; a real checkpoint "
                                            f"({self.source.path}) loads as its own {self.own_dtype} (dtype=auto) or "
                                            "cast to fp32, fp16 or bf16")
        return check_dtype(dtype)

    def cast(self, dtype: str) -> str:
        """``""`` when the files are used as stored at ``dtype``, else the cast, e.g. ``bf16→fp16``."""
        target = DTYPES[self.resolve_dtype(dtype)][0]
        if all(r.dtype == target or not r.dtype.is_floating_point for r in self.records):
            return ""
        return f"{self.source_dtype}→{self.resolve_dtype(dtype)}"

    def tensor_specs(self, dtype: str = AUTO_DTYPE) -> tuple[TensorSpec, ...]:
        target = DTYPES[self.resolve_dtype(dtype)][0]
        return tuple(TensorSpec(r.name, r.shape, target if r.dtype.is_floating_point else r.dtype)
                     for r in self.records)

    def checkpoint_bytes(self, dtype: str = AUTO_DTYPE) -> int:
        return sum(t.nbytes for t in self.tensor_specs(dtype))

    def model_names(self, state_dict: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
        """The files' names mapped onto the model's as ``from_pretrained`` maps them: a name the model lacks gets the
        base model's prefix (``decoder.…`` → ``model.decoder.…``); names the class ignores on load are dropped."""
        keys = set(model.state_dict())
        prefix = str(getattr(model, "base_model_prefix", "") or "")
        ignore = _patterns(getattr(model, "_keys_to_ignore_on_load_unexpected", None))
        out: dict[str, Any] = {}
        for name, t in state_dict.items():
            if name in keys:
                out[name] = t
            elif prefix and f"{prefix}.{name}" in keys:
                out[f"{prefix}.{name}"] = t
            elif not any(p.search(name) for p in ignore):
                out[name] = t  # the build reports it as a tensor the model does not have
        return out

    def check_tensors(self, dtype: str = AUTO_DTYPE) -> None:
        """The files hold every tensor the architecture needs and none it does not (tied aliases and the class's
        ignore lists as ``from_pretrained`` treats them): else a ``CheckpointTensorsError`` naming them."""
        def check() -> bool:
            model = self.meta_model(dtype)
            aliases = tied_aliases(model)
            keys = set(model.state_dict())
            mapped = set(self.model_names({r.name: None for r in self.records}, model))
            optional = _patterns(getattr(model, "_keys_to_ignore_on_load_missing", None))
            missing = sorted(k for k in keys - aliases - mapped if not any(p.search(k) for p in optional))
            extra = sorted(mapped - keys)
            if missing or extra:
                raise CheckpointTensorsError(
                    f"{self.source.path}: the weight files do not fit {type(model).__name__} of config.json: "
                    f"{len(missing)} missing {missing[:5]}, {len(extra)} extra {extra[:5]} — a truncated or "
                    "foreign checkpoint, or a config.json of another model")
            return True

        self._cached(f"checked_{self.resolve_dtype(dtype)}", check)

    def read_state_dict(self, dtype: str = AUTO_DTYPE) -> dict[str, torch.Tensor]:
        """Every tensor of the files, read now (one at a time, each cast to ``dtype`` as it is read): for code that
        needs the weights without a checkpoint store (a pipeline chain's servers)."""
        target = DTYPES[self.resolve_dtype(dtype)][0]
        with WeightReader(self.source) as reader:
            return {r.name: reader.tensor(r, target if r.dtype.is_floating_point else None) for r in self.records}

    # -- checkpoints (harness.checkpoints.OwnCheckpoints) -----------------------------------------------------
    def provenance(self, dtype: str) -> dict[str, Any]:
        return {**self.source.describe(), "fingerprint": self.fingerprint, "source_dtype": self.source_dtype,
                "dtype": self.resolve_dtype(dtype), "cast": self.cast(dtype)}

    def manifest(self, store: CheckpointStore, progress: bool = True) -> Checkpoint:
        """The source's files in place, with their manifest (computed once per fingerprint, cached in the store)."""
        return in_place(store, self.name, self.source, self.records, self.own_dtype, self.fingerprint, progress)

    def ensure_checkpoint(self, store: CheckpointStore, dtype: str, fmt: str, progress: bool) -> Checkpoint:
        """The source itself when ``fmt`` is its format and no cast is asked; else its conversion in the store."""
        dtype = self.resolve_dtype(dtype)
        self.check_tensors(dtype)
        ref = self.manifest(store, progress)
        if fmt == self.source.format and not self.cast(dtype):
            return ref
        return converted(store, self, self.name, self.source, self.records, dtype, fmt, self.fingerprint,
                         self.provenance(dtype), ref, progress)

    def checkpoint_path(self, store: CheckpointStore, dtype: str, fmt: str) -> Path:
        return conversion_path(store, self.name, self.source, self.resolve_dtype(dtype), fmt, self.fingerprint)

    def describe_source(self) -> dict[str, Any]:
        return self.source.describe()

    def dtype_info(self, dtype: str) -> dict[str, str]:
        return {"source_dtype": self.source_dtype, "cast": self.cast(dtype)}

    def trial_config(self) -> dict[str, Any]:
        """This option as a trial process instantiates it: the same directory (an absolute path; the hub snapshot
        pinned to its commit), nothing downloaded."""
        out = {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name,
               "trust_remote_code": self.trust_remote_code, "cache_dir": self.cache_dir}
        if self.source.kind == "hf_cache":
            return {**out, "hf_id": self.hf_id, "revision": self.source.revision,
                    "cache_dir": str(self.source.path.parents[2])}
        return {**out, "path": str(self.source.path)}

    # -- text ----------------------------------------------------------------------------------------------
    def tokenizer(self) -> Any | None:
        """The directory's tokenizer (transformers' AutoTokenizer, local files only), or None when it has none."""
        if not self.source.has_tokenizer:
            return None
        if self.source.path not in _TOKENIZERS:
            from transformers import AutoTokenizer

            _TOKENIZERS[self.source.path] = AutoTokenizer.from_pretrained(
                str(self.source.path), local_files_only=True, trust_remote_code=self.trust_remote_code)
        return _TOKENIZERS[self.source.path]

    def prompt(self, text: str, tokens: int) -> tuple[list[int], str]:
        """The prompt's token ids and its text: ``text`` tokenized when the directory has a tokenizer, else the
        zoo's fixed ids (and no text)."""
        tok = self.tokenizer()
        if tok is None or not text:
            return super().prompt(text, tokens)
        ids = [int(i) for i in tok(text)["input_ids"]]
        return ids, text

    def decode(self, token_id: int) -> str:
        tok = self.tokenizer()
        return "" if tok is None else str(tok.decode([int(token_id)]))


def _patterns(raw: Any) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in (raw or [])]
