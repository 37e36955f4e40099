"""The model zoo: real architectures (transformers config classes) built on the meta device, no weights allocated."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

# dtype axis → (stored weight dtype, compute dtype). int8 is weight-only: 2-D weights are stored as int8
# with one
# fp16 scale per output row (``<name>_scale``) and dequantized to fp16 when the model is built.
DTYPES: dict[str, tuple[torch.dtype, torch.dtype]] = {
    "fp32": (torch.float32, torch.float32),
    "fp16": (torch.float16, torch.float16),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "int8": (torch.int8, torch.float16),
}
INT8_SCALE_SUFFIX = "_scale"


AUTO_DTYPE = "auto"  # the model's own: fp16 for a zoo model, the checkpoint's dtype for a real one
ZOO_DTYPE = "fp16"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)} (or {AUTO_DTYPE}: the "
                         "model's own)")
    return dtype


def compute_dtype(dtype: str) -> torch.dtype:
    return DTYPES[check_dtype(dtype)][1]


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor of a checkpoint: name, shape and storage dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


def _is_int8_weight(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and name.endswith("weight")


@dataclass(frozen=True)
class ModelSpec:
    """A named real architecture: the transformers config class and its published hyperparameters."""

    name: str
    arch: str
    hf_config: dict[str, Any] = field(default_factory=dict)
    reference_params: int | None = None
    reference_source: str = ""

    def __post_init__(self) -> None:
        module, _, cls = self.arch.rpartition(".")
        if not module or not cls:
            raise ValueError(f"model {self.name!r}: arch={self.arch!r} must be a dotted class path")
        # Hydra hands in an OmegaConf DictConfig; keep a plain dict so the spec is hashable-by-name and
        # picklable.
        object.__setattr__(self, "hf_config", plain_config(self.hf_config))

    def __hash__(self) -> int:
        return hash((self.name, self.arch, repr(sorted(self.hf_config.items()))))

    def resolve_dtype(self, dtype: str) -> str:
        """The dtype axis value a run with ``dtype`` uses for this model: ``auto`` is the zoo's fp16."""
        return ZOO_DTYPE if dtype == AUTO_DTYPE else check_dtype(dtype)

    def describe_source(self) -> dict[str, Any]:
        """Where the weights come from (result columns): seeded synthetic values of this architecture."""
        return {"model_source": "zoo", "model_path": "", "hf_id": "", "hf_revision": ""}

    def auto_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' Auto classes (a real model may allow remote code)."""
        return {}

    def model_class(self) -> type:
        """The transformers class that builds this architecture (importing its modeling module)."""
        from transformers import AutoModelForCausalLM

        cls: type = AutoModelForCausalLM._model_mapping[type(self.config())]  # type: ignore[assignment]
        return cls

    def variant(self, name: str, **hf_overrides: Any) -> ModelSpec:
        """A zoo spec of this architecture with some hyperparameters replaced (a warm-up copy, a deeper chain)."""
        return ModelSpec(name, self.arch, {**self.hf_config, **hf_overrides}, None, f"variant of {self.name}")

    def model_names(self, state_dict: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
        """The loaded tensors under the names ``model`` has (a zoo checkpoint stores exactly those)."""
        return state_dict

    def config(self, dtype: str = "fp16") -> Any:
        """The transformers config with the model's compute dtype."""
        module, _, cls = self.arch.rpartition(".")
        config_cls = getattr(importlib.import_module(module), cls)
        cfg = config_cls(**self.hf_config)
        set_config_dtype(cfg, compute_dtype(self.resolve_dtype(dtype)))
        return cfg

    def meta_model(self, dtype: str = "fp16") -> torch.nn.Module:
        """The model on the meta device: real names and shapes, no memory."""
        return _build(self, compute_dtype(self.resolve_dtype(dtype)), torch.device("meta"))

    def build(self, dtype: str, device: torch.device | str = "meta") -> torch.nn.Module:
        """The model on ``device`` (uninitialized storage on real devices)."""
        return _build(self, compute_dtype(self.resolve_dtype(dtype)), torch.device(device))

    def num_params(self) -> int:
        """Unique parameters (tied embeddings counted once), counted on the meta device."""
        return _num_params(self)

    def tensor_specs(self, dtype: str = "fp16") -> tuple[TensorSpec, ...]:
        """The tensors a checkpoint of this model stores, in order (tied aliases dropped)."""
        return _tensor_specs(self, self.resolve_dtype(dtype))

    def checkpoint_bytes(self, dtype: str = "fp16") -> int:
        return sum(t.nbytes for t in self.tensor_specs(dtype))

    def prompt(self, text: str, tokens: int) -> tuple[list[int], str]:
        """The prompt's token ids and text. A zoo model has no tokenizer: the fixed ids :func:`fixed_prompt` (and no
        text); a real model with tokenizer files tokenizes ``text``."""
        return fixed_prompt(int(self.config().vocab_size), tokens), ""

    def decode(self, token_id: int) -> str:
        """A token's text (empty without a tokenizer)."""
        return ""

    def dtype_info(self, dtype: str) -> dict[str, str]:
        """The weights' stored dtype before the run's ``dtype`` and the cast between them (none: synthetic values are
        generated in the run's dtype)."""
        return {"source_dtype": self.resolve_dtype(dtype), "cast": ""}

    def trial_config(self) -> dict[str, Any] | None:
        """This option as a trial process should instantiate it; None: exactly as it was composed."""
        return None

    @property
    def num_layers(self) -> int:
        cfg = self.config()
        return int(cfg.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config().hidden_size)

    def layer_bytes(self, dtype: str = "fp16") -> int:
        """Bytes of one decoder layer's weights (layer 0), the block size for pipeline placement."""
        specs = self.tensor_specs(dtype)
        marker = ".0."
        return sum(t.nbytes for t in specs if _layer_prefix(t.name) is not None and marker in t.name
                   and t.name.split(marker)[0].endswith(("layers", "h")))

    def kv_bytes_per_token(self, dtype: str = "fp16") -> int:
        """KV-cache bytes per token over all layers: 2 (K, V) × layers × kv heads × head dim × element
        size."""
        cfg = self.config(dtype)
        heads = int(getattr(cfg, "num_attention_heads", 0))
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_kv_heads", None) or heads)
        if getattr(cfg, "multi_query", False) and not getattr(cfg, "new_decoder_architecture", False):
            kv_heads = 1
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        elem = torch.empty((), dtype=compute_dtype(dtype)).element_size()
        return 2 * self.num_layers * kv_heads * head_dim * elem


def fixed_prompt(vocab_size: int, tokens: int) -> list[int]:
    """The fixed prompt of a model without a tokenizer: token ids 1..tokens (mod the vocabulary)."""
    return [i % (vocab_size - 1) + 1 for i in range(tokens)]


def set_config_dtype(cfg: Any, dtype: torch.dtype) -> None:
    # transformers 5 names the attribute ``dtype``; 4.x ``torch_dtype``
    setattr(cfg, "dtype" if hasattr(cfg, "dtype") else "torch_dtype", dtype)


def _layer_prefix(name: str) -> str | None:
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layers", "h") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return None


def plain_config(value: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(value) if isinstance(value, dict) else value


def _build(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    cfg = spec.config()
    set_config_dtype(cfg, dtype)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float16)
        with device:
            model = AutoModelForCausalLM.from_config(cfg, **spec.auto_kwargs())
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


@lru_cache(maxsize=64)
def _num_params(spec: ModelSpec) -> int:
    model = _build(spec, torch.float16, torch.device("meta"))
    return sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """Parameter names that are another parameter under a second name (tied weights: ``lm_head.weight`` when it is
    the embedding): every name after the first of the same tensor, in ``named_parameters`` order."""
    first: dict[int, str] = {}
    aliases = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.add(name)
        else:
            first[id(p)] = name
    return aliases


@lru_cache(maxsize=64)
def _tensor_specs(spec: ModelSpec, dtype: str) -> tuple[TensorSpec, ...]:
    _stored, compute = DTYPES[dtype]
    model = _build(spec, compute, torch.device("meta"))
    aliases = tied_aliases(model)
    out: list[TensorSpec] = []
    for name, t in model.state_dict().items():
        if name in aliases:
            continue
        shape = tuple(int(s) for s in t.shape)
        if dtype == "int8" and _is_int8_weight(name, shape):
            out.append(TensorSpec(name, shape, torch.int8))
            out.append(TensorSpec(name + INT8_SCALE_SUFFIX, (shape[0],), torch.float16))
        else:
            out.append(TensorSpec(name, shape, compute if t.dtype.is_floating_point else t.dtype))
    return tuple(out)


def dequantize(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn an int8 weight-only state dict into fp16 weights (``w = q · scale[row]``); other tensors pass
    through."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        if name.endswith(INT8_SCALE_SUFFIX):
            continue
        scale = state_dict.get(name + INT8_SCALE_SUFFIX)
        if scale is not None and t.dtype == torch.int8:
            out[name] = t.to(scale.dtype) * scale.unsqueeze(1)
        else:
            out[name] = t
    return out
