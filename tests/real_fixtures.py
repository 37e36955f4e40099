"""Real checkpoints as users get them, made offline with the libraries that make them: a small transformers model
saved with ``save_pretrained`` (bf16 or fp32, sharded or one file), a ``.bin``-only directory in the layout
transformers 4 wrote with ``safe_serialization=False`` (transformers 5 writes safetensors only), a tokenizer
trained with the ``tokenizers`` library, and a Hugging Face cache tree (``models--org--name/{blobs,refs,snapshots}``,
snapshot files linked to ``../../blobs/<hash>``) as huggingface_hub lays it out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

CORPUS = ["the quick brown fox jumps over the lazy dog", "a model starts cold and loads its weights",
          "the first token of a prompt comes after the prefill", "tensors are read from files into memory",
          "load the checkpoint then build the model and run it"] * 20
PROMPT = "the quick brown fox"
TINY_OPT = {"model_type": "opt", "hidden_size": 64, "ffn_dim": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 128, "word_embed_proj_dim": 64,
            "tie_word_embeddings": True}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
              "max_position_embeddings": 128, "tie_word_embeddings": False}


def hf_model(arch: dict[str, Any], dtype: torch.dtype, seed: int = 0) -> Any:
    """A randomly initialized transformers model of ``arch`` (seeded), in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(arch)
    cfg_obj = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg_obj)
    return model.to(dtype).eval()


def train_tokenizer(dst: Path, vocab_size: int = 300) -> None:
    """A byte-level BPE tokenizer trained on a small corpus with ``tokenizers``, saved by transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(dst))


def _with_tokenizer(dst: Path, arch: dict[str, Any], tokenizer: bool) -> dict[str, Any]:
    """Train the tokenizer into ``dst`` first (when asked) and size the model's vocabulary to it, so every token
    the model can produce has a text."""
    if not tokenizer:
        return arch
    from transformers import AutoTokenizer

    train_tokenizer(dst)
    return {**arch, "vocab_size": len(AutoTokenizer.from_pretrained(str(dst)))}


def save_safetensors(dst: Path, arch: dict[str, Any] = TINY_OPT, dtype: torch.dtype = torch.bfloat16,
                     sharded: bool = False, tokenizer: bool = True, seed: int = 0) -> Path:
    """``save_pretrained`` of a tiny model: one ``model.safetensors``, or shards with an index."""
    arch = _with_tokenizer(dst, arch, tokenizer)
    model = hf_model(arch, dtype, seed)
    model.save_pretrained(str(dst), max_shard_size="60KB" if sharded else "5GB")
    return dst


def save_bin(dst: Path, arch: dict[str, Any] = TINY_OPT, dtype: torch.dtype = torch.float32, sharded: bool = False,
             tokenizer: bool = False, seed: int = 0) -> Path:
    """A ``.bin``-only directory as transformers 4's ``save_pretrained(safe_serialization=False)`` wrote it:
    ``torch.save`` of the state dict without tied aliases, one ``pytorch_model.bin`` or shards with an index."""
    dst.mkdir(parents=True, exist_ok=True)
    arch = _with_tokenizer(dst, arch, tokenizer)
    model = hf_model(arch, dtype, seed)
    model.config.to_json_file(str(dst / "config.json"))
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if model.config.tie_word_embeddings else set()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    if not sharded:
        torch.save(state, dst / "pytorch_model.bin")
    else:
        names = list(state)
        half = len(names) // 2
        parts = [names[:half], names[half:]]
        weight_map = {}
        for i, part in enumerate(parts):
            fname = f"pytorch_model-{i + 1:05d}-of-{len(parts):05d}.bin"
            torch.save({k: state[k] for k in part}, dst / fname)
            weight_map.update({k: fname for k in part})
        total = sum(v.numel() * v.element_size() for v in state.values())
        (dst / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    return dst


def hub_cache(cache: Path, hf_id: str, src: Path, commit: str = "c0ffee" + "0" * 34, ref: str = "main") -> Path:
    """Put ``src``'s files into a Hugging Face cache tree under ``cache`` (the hub cache, e.g. ``$HF_HOME/hub``):
    blobs named by content hash, ``refs/<ref>`` holding the commit, snapshot files as relative links to the
    blobs. Returns the snapshot directory."""
    repo = cache / f"models--{hf_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        if not (repo / "blobs" / blob).exists():
            (repo / "blobs" / blob).write_bytes(data)
        link = snap / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(f"../../blobs/{blob}", link)
    (repo / "refs" / ref).write_text(commit)
    return snap


def tree_state(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under ``root`` (links followed) with the sha256 of its bytes, its mtime and its size, plus every
    link's target: equal before and after a run means nothing was written."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel + " ->"] = (os.readlink(p), 0, 0)
            if p.is_file():
                st = p.stat()
                out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size)
            elif p.is_dir() and not p.is_symlink():
                out[rel + "/"] = ("dir", p.stat().st_mtime_ns, 0)
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
