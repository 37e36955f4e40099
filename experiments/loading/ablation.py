"""``experiment=sllm_ablation``: the native loader with its optimizations switched on one by one (cumulative),
all variants interleaved in one loading run so they share ceilings, cache handling and trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.loading import experiment as loading
from experiments.loading.suite import copy_config
from harness.config import ConfigError, check_args
from harness.experiment import ExperimentResult


def cumulative_variants(base: str, steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Step i's variant = ``base`` with the overrides of steps 0..i applied in order (later steps win)."""
    if not steps:
        raise ValueError("ablation_steps is empty: give at least the starting point")
    variants: dict[str, dict[str, Any]] = {}
    acc: dict[str, Any] = {}
    for i, step in enumerate(steps):
        if "name" not in step:
            raise ValueError(f"ablation_steps[{i}] has no 'name' (got keys {sorted(step)})")
        name = str(step["name"])
        if name in variants:
            raise ValueError(f"ablation_steps[{i}].name={name!r} is used twice")
        acc = {**acc, **dict(step.get("overrides") or {})}
        variants[name] = {"base": base, "overrides": dict(acc)}
    return variants


def cumulative_gains(summary: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per cache state and step: median load time, speedup over the first step and over the previous step."""
    rows = []
    ok = summary[summary["n"] > 0]
    for state, group in ok.groupby("cache_state", sort=True):
        by_step = group.set_index("loader")["load_s_median"]
        first = by_step.get(order[0], np.nan)
        prev = np.nan
        for i, step in enumerate(order):
            load_s = by_step.get(step, np.nan)
            rows.append({"cache_state": state, "step": i, "loader": step, "load_s_median": load_s,
                         "speedup_vs_start": first / load_s if load_s > 0 else np.nan,
                         "speedup_vs_previous": prev / load_s if load_s > 0 else np.nan})
            prev = load_s
    return pd.DataFrame(rows)


def run(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Build the cumulative variants from ``ablation_steps`` and run them as the loaders of one loading run."""
    if cfg.get("loader_variants"):  # the steps are the variants here: a second set would be silently dropped
        raise ConfigError("sllm_ablation builds its loader variants from ablation_steps; "
                          "drop loader_variants=... or run experiment=loading")
    steps = OmegaConf.to_container(cfg.ablation_steps, resolve=True)
    assert isinstance(steps, list)
    if cfg.smoke and len(steps) > 2:  # the first and the last step: every knob still changes once
        steps = [steps[0], {"name": "+all", "overrides": {k: v for s in steps[1:] for k, v in
                                                          dict(s.get("overrides") or {}).items()}}]
    variants = cumulative_variants(str(cfg.ablation_base), [dict(s) for s in steps])
    check_args(cfg, {"loader": [str(cfg.ablation_base)]}, singles=("model",))
    sub = copy_config(cfg)
    with open_dict(sub):
        sub.loader_variants = variants
        sub.loaders = list(variants)
    result = loading.run_cell(sub, out_dir)
    result.tables["gains"] = cumulative_gains(result.tables["summary"], list(variants))
    result.documents["ablation"] = {"base": str(cfg.ablation_base), "variants": variants}
    return result
