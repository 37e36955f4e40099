"""Model facts for the simulator from the model zoo (``conf/model/``), cached per architecture and dtype."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from harness.config import instantiate_option, options
from schedulers.base import ModelInfo
from schedulers.cluster import Cluster
from schedulers.errors import ModelTooLargeError, UnknownModelError

# Fraction of an instance's GPU memory that is weights; the rest holds the KV cache and activations.
WEIGHT_FRACTION = 0.8
# Roofline efficiencies of the default linear profile (decode is memory-bound, prefill compute-bound).
DECODE_EFFICIENCY = 0.6
PREFILL_EFFICIENCY = 0.5
PREFILL_BASE_S = 0.01


@dataclass(frozen=True)
class ArchFacts:
    """What the zoo tells us about one architecture: checkpoint bytes and parameter count."""

    name: str
    size_bytes: int
    num_params: int


@lru_cache(maxsize=128)
def arch_facts(arch: str, dtype: str = "fp16") -> ArchFacts:
    """Checkpoint size and parameter count of a zoo model (built on the meta device once, then cached)."""
    known = options("model")
    if arch not in known:
        raise UnknownModelError(f"model {arch!r} is not in the model zoo (conf/model/); known: {known}")
    spec = instantiate_option("model", arch)
    return ArchFacts(arch, int(spec.checkpoint_bytes(dtype)), int(spec.num_params()))


def base_name(model: str) -> str:
    """``opt-6.7b#17`` → ``opt-6.7b``: replicas of one architecture share its facts."""
    return model.split("#")[0]


def model_info(model: str, cluster: Cluster, dtype: str = "fp16") -> ModelInfo:
    """A model's ``ModelInfo`` on ``cluster``: size, GPUs per instance, and the linear inference profile.

    GPUs per instance = ceil(bytes / (WEIGHT_FRACTION · GPU memory)) (tensor parallel inside one server).
    Default profile (roofline): decode per token = bytes / (GPUs · HBM bw · eff); prefill per token =
    2 · params / (GPUs · FLOP/s · eff) (the 2·N FLOPs per token of a dense transformer, Kaplan et al. 2020).
    Calibrated times (``cluster.model_times``, e.g. from a calibration file) replace parts of it:
    ``first_token_s`` the prefill base time, ``prefill_s_per_token`` / ``decode_s_per_token`` the slopes.
    ``startup_s`` is what the cluster's runtime charges a cold start of the model (``Cluster.startup_s``);
    ``build_s`` includes the engine's set-up unless the runtime holds prepared engines (``Cluster.engine_s``).
    """
    facts = arch_facts(base_name(model), dtype)
    gpus = math.ceil(facts.size_bytes / (WEIGHT_FRACTION * cluster.gpu_mem_bytes))
    if gpus > cluster.gpus_per_server:
        raise ModelTooLargeError(
            f"model {model!r} ({facts.size_bytes / 1e9:.1f} GB) needs {gpus} GPUs of "
            f"{cluster.gpu_mem_gb} GB but a server has {cluster.gpus_per_server}; pipeline-parallel "
            f"placement across servers is not modelled — use a smaller model, a lower dtype, or larger GPUs"
        )
    times = cluster.times_for(model)
    decode = facts.size_bytes / (gpus * cluster.gpu_hbm_gbps * 1e9 * DECODE_EFFICIENCY)
    prefill = 2 * facts.num_params / (gpus * cluster.gpu_tflops * 1e12 * PREFILL_EFFICIENCY)
    if times.decode_s_per_token is not None:
        decode = times.decode_s_per_token
    if times.prefill_s_per_token is not None:
        prefill = times.prefill_s_per_token
    base = times.first_token_s if times.first_token_s is not None else PREFILL_BASE_S
    return ModelInfo(
        name=model,
        size_bytes=facts.size_bytes,
        gpus=gpus,
        prefill_s_per_token=prefill,
        prefill_base_s=float(base),
        decode_s_per_token=decode,
        build_s=times.build_s + cluster.engine_s(model),  # the engine's set-up follows the build
        startup_s=cluster.startup_s(model),
    )


def model_infos(models: list[str], cluster: Cluster, dtype: str = "fp16") -> dict[str, ModelInfo]:
    """``ModelInfo`` for every model of a workload (unknown or too-large models raise named errors)."""
    return {m: model_info(m, cluster, dtype) for m in models}
