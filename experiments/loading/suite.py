"""Loading experiments over several cells (models × dtypes) in one run: the ServerlessLLM loading figure and the
per-dtype cold start. Each cell is one loading experiment; all cells share this run's directory and tables."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.loading import experiment as loading
from harness.checkpoints import CheckpointStore
from harness.config import ConfigError, check_args, listed, name_list
from harness.experiment import ExperimentResult, PartialResult

log = logging.getLogger("coldstart.loading_suite")

# The loaders speedups are reported against, as ServerlessLLM does (Fig. 6 of the paper: vs safetensors, torch).
SPEEDUP_BASELINES = ("safetensors", "torch")
CellRunner = Callable[[DictConfig, Path], ExperimentResult]


def copy_config(cfg: DictConfig) -> DictConfig:
    """A resolved, writable copy of ``cfg`` (sub-runs change keys on it; the run's own config never changes)."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(sub, DictConfig)
    return sub


def cell_config(cfg: DictConfig, model: str | None, dtype: str) -> DictConfig:
    """``cfg`` with ``dtype`` set and ``model`` replaced by the named ``conf/model`` option (with the run's
    ``model_args.<name>``); ``model=None`` keeps the composed model (a copy either way)."""
    sub = copy_config(cfg)
    with open_dict(sub):
        if model is not None:
            sub.model = OmegaConf.to_container(listed(cfg, "model", model), resolve=True)
        sub.dtype = dtype
    return sub


def _formats(cfg: DictConfig) -> set[str]:
    names, variants = loading.listed_loaders(cfg)
    return {f for n in loading.loader_bases(names, variants) for f in instantiate(listed(cfg, "loader", n)).formats[:1]}


def check_cells(cfg: DictConfig, models: list[str] | None) -> None:
    """Fail before anything runs on an override the cells would ignore (``models=None``: the composed model)."""
    names, variants = loading.listed_loaders(cfg)
    lists = {"loader": loading.loader_bases(names, variants), "runtime": loading.listed_runtimes(cfg),
             "engine": loading.listed_engines(cfg)}
    if models is not None:
        lists["model"] = models
    check_args(cfg, lists, singles=() if models is not None else ("model",))


def _check_distinct(cfg: DictConfig, cells: list[tuple[str | None, str]]) -> None:
    """Two cells of one name and dtype would merge in every table, figure and report (a real model whose directory
    is named like a zoo model, listed beside it): refused before anything runs, with the fix."""
    seen: dict[tuple[str, str], tuple[str, bool]] = {}
    for name, dtype in cells:
        spec = instantiate(cell_config(cfg, name, dtype).model)
        key = (str(spec.name), spec.resolve_dtype(dtype))
        option_name = name or "model"
        real = spec.describe_source()["model_source"] != "zoo"
        if key in seen:
            other, other_real = seen[key]
            fix = option_name if real or not other_real else other
            raise ConfigError(f"models {other!r} and {option_name!r} are both named {key[0]!r} at {key[1]}: their "
                              f"rows would merge; give {fix!r} its own name (model_args.{fix}.name=..., or name: "
                              "in its option file)")
        seen[key] = (option_name, real)


def run_cells(cfg: DictConfig, out_dir: Path, cells: list[tuple[str | None, str]],
              runner: CellRunner = loading.run_cell) -> ExperimentResult:
    """Run the loading experiment once per (model, dtype) cell and stack the tables (model ``None``: the composed
    model). The caller has checked the run's overrides (:func:`check_cells`).

    With ``delete_checkpoints: true`` the checkpoints a cell generated are deleted before the next cell starts,
    so a size ladder fits a disk that holds one model at a time (ServerlessLLM's evaluation does the same).
    Ceilings are measured per cell on that cell's own files and kept per cell in ``ceilings.json``.
    """
    if not cells:
        raise ValueError("no cells to run: set models=[...] and dtypes=[...] (or dtype=)")
    _check_distinct(cfg, cells)
    trials: list[pd.DataFrame] = []
    summaries: list[pd.DataFrame] = []
    ceilings: dict[str, Any] = {}
    environment: dict[str, Any] = {}

    def stacked() -> ExperimentResult:
        return ExperimentResult(tables={"trials": pd.concat(trials, ignore_index=True) if trials else pd.DataFrame(),
                                        "summary": pd.concat(summaries, ignore_index=True) if summaries
                                        else pd.DataFrame()},
                                documents={"ceilings": ceilings, "environment": environment})

    def keep(model: str, dtype: str, result: ExperimentResult) -> None:
        nonlocal environment
        trials.append(result.tables["trials"])
        summaries.append(result.tables["summary"])
        ceilings[f"{model} {dtype}"] = result.documents.get("ceilings", {})
        environment = result.documents.get("environment", environment)

    for i, (name, dtype) in enumerate(cells):
        log.info("cell %d/%d: %s %s", i + 1, len(cells), name or cfg.model.name, dtype)
        try:
            sub = cell_config(cfg, name, dtype)
            store: CheckpointStore = instantiate(sub.storage)
            spec = instantiate(sub.model)
            model, dtype = str(spec.name), spec.resolve_dtype(dtype)  # auto: the model's own dtype
            paths = [store.path_for(spec, dtype, fmt, int(sub.seed)) for fmt in sorted(_formats(sub))]
            existed = {p for p in paths if p.exists()}
            try:
                keep(model, dtype, runner(sub, out_dir / f"{model}_{dtype}"))
            finally:
                if cfg.get("delete_checkpoints"):
                    for p in paths:  # never one this run did not write, never outside the store (a user's model)
                        if p not in existed and p.is_relative_to(store.root):
                            shutil.rmtree(p, ignore_errors=True)
        except PartialResult as partial:  # the cell stopped early: keep its trials and the finished cells'
            keep(model, dtype, partial.result)
            raise PartialResult(stacked(), partial.cause) from partial.cause
        except BaseException as exc:
            if not trials:
                raise
            raise PartialResult(stacked(), exc) from exc
    return stacked()


def speedups(summary: pd.DataFrame, baselines: tuple[str, ...] = SPEEDUP_BASELINES) -> pd.DataFrame:
    """Per (model, dtype, device, cache_state, loader): median load time and speedup over each baseline loader,
    both medians from this run's summary (never from another run)."""
    keys = ["model", "dtype", "device", "cache_state"]
    ok = summary[summary["n"] > 0]
    rows = []
    for cell, group in ok.groupby(keys, sort=True):
        by_loader = group.set_index("loader")["load_s_median"]
        for loader_name, load_s in by_loader.items():
            row: dict[str, Any] = dict(zip(keys, cell, strict=True))
            row.update({"loader": loader_name, "load_s_median": load_s})
            for base in baselines:
                base_s = by_loader.get(base, np.nan)
                row[f"speedup_vs_{base}"] = base_s / load_s if load_s > 0 else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _models(cfg: DictConfig) -> list[str] | None:
    """The model ladder; ``None`` when the run uses the composed model (``smoke=true``)."""
    return None if cfg.smoke else name_list(cfg, "models")


def run_sllm_loading(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """``experiment=sllm_loading``: loaders × a model size ladder × cache states, with speedups vs torch and
    safetensors (the loading figure of ServerlessLLM, measured on this machine)."""
    models = _models(cfg)
    check_cells(cfg, models)
    ladder: list[str | None] = list(models) if models is not None else [None]
    result = run_cells(cfg, out_dir, [(m, str(cfg.dtype)) for m in ladder])
    result.tables["speedups"] = speedups(result.tables["summary"])
    return result


def run_dtype_coldstart(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """``experiment=dtype_coldstart``: cold-start time and bytes per dtype for one model."""
    dtypes = name_list(cfg, "dtypes")[: 2 if cfg.smoke else None]
    check_cells(cfg, None)
    result = run_cells(cfg, out_dir, [(None, d) for d in dtypes])  # the composed model
    summary = result.tables["summary"]
    ref = summary[(summary["dtype"] == dtypes[0]) & (summary["n"] > 0)]
    base = ref.set_index(["loader", "cache_state"])["cold_start_s_median"]
    keys = pd.MultiIndex.from_frame(summary[["loader", "cache_state"]])
    summary["cold_start_vs_" + dtypes[0]] = summary["cold_start_s_median"].to_numpy() / base.reindex(keys).to_numpy()
    return result
