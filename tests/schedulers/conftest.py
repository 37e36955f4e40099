"""Shared fixtures for the scheduler tests: Hydra composition, small clusters, model facts without the zoo."""

from __future__ import annotations

from schedulers.base import ModelInfo


def fake_model(
    name: str = "m",
    size_gb: float = 10.0,
    gpus: int = 1,
    decode_s: float = 0.02,
    prefill_s: float = 0.0001,
    base_s: float = 0.01,
    build_s: float = 0.0,
    startup_s: float = 0.0,
) -> ModelInfo:
    """A hand-written model: ``size_gb`` of weights, ``gpus`` per instance, a linear speed profile."""
    return ModelInfo(
        name=name,
        size_bytes=int(size_gb * 1e9),
        gpus=gpus,
        prefill_s_per_token=prefill_s,
        prefill_base_s=base_s,
        decode_s_per_token=decode_s,
        build_s=build_s,
        startup_s=startup_s,
    )
