"""Weights & Biases sink: opened when the run starts (config, tags, group, job type, system metrics), then every
table, per-cell scalar and figure of the written run, closed with the run's exit code."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

MODES = ("auto", "online", "offline", "disabled")
# Tables up to this many rows are logged as W&B tables; longer ones as artifact files (the W&B UI caps tables).
MAX_TABLE_ROWS = 10_000
TABLE_SUFFIXES = (".parquet", ".csv")


def _sweep() -> tuple[str, Path] | None:
    """(sweep id, sweep directory) when this is a job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    return sweep_dir.name, sweep_dir


def _name(value: object) -> str:
    """A cell value in a metric name: 8.0 is 8; W&B's separator '/' never appears inside a value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).replace("/", "_")


def cell_metrics(summary: pd.DataFrame, cells: list[str]) -> dict[str, float]:
    """One scalar per numeric summary column and cell, named by its keys: ``load_s_median/loader=native/
    cache_state=cold``; the cell keys that are the same on every row are left out of the name."""
    keys = [k for k in cells if k in summary and summary[k].nunique(dropna=False) > 1]
    numeric = [c for c in summary.columns if c not in cells and pd.api.types.is_numeric_dtype(summary[c])
               and not pd.api.types.is_bool_dtype(summary[c])]
    out: dict[str, float] = {}
    for _, row in summary.iterrows():
        cell = "/".join(f"{k}={_name(row[k])}" for k in keys)
        for col in numeric:
            value = float(row[col])
            if math.isfinite(value):
                out[f"{col}/{cell}" if cell else col] = value
    return out


class WandbLogger:
    """Logs a run to W&B; ``mode=auto`` runs offline unless WANDB_API_KEY is set. wandb is imported lazily.

    ``group`` defaults to the sweep (``<experiment>/<sweep timestamp>``) or the run; ``job_type`` to the experiment.
    Offline runs of one sweep share one ``wandb/`` folder in the sweep directory (``wandb sync <sweep>/wandb``).
    """

    def __init__(self, project: str = "coldstart", entity: str | None = None, mode: str = "auto",
                 tags: list[str] | None = None, group: str | None = None, job_type: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"logger.mode={mode!r}; choose one of {MODES}")
        self.project, self.entity, self.mode, self.tags = project, entity, mode, list(tags or [])
        self.group, self.job_type = group, job_type
        self.run: Any = None

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("logger=wandb needs the wandb package: pip install 'coldstart[wandb]'") from exc
        experiment = str(cfg.experiment.name)
        sweep = _sweep()
        group = self.group or f"{experiment}/{sweep[0] if sweep else run_dir.name}"
        wandb_dir = sweep[1] if sweep else run_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        config = OmegaConf.to_container(cfg, resolve=True)
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.resolved_mode(),  # type: ignore[arg-type]
                              dir=str(wandb_dir), config=config,  # type: ignore[arg-type]
                              name=f"{experiment}/{run_dir.name}", group=group, job_type=self.job_type or experiment,
                              tags=[experiment, *self.tags], reinit="finish_previous")

    def log_run(self, cfg: DictConfig, run_dir: Path, status: dict[str, Any]) -> None:
        import wandb

        run = self.run
        if run is None:
            return
        cells = [str(c) for c in (cfg.experiment.get("cells") or [])]
        for path in sorted(p for p in run_dir.iterdir() if p.suffix in TABLE_SUFFIXES):
            df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            if path.stem == "summary" and path.suffix == ".csv":
                run.summary.update(cell_metrics(df, cells))
            if len(df) <= MAX_TABLE_ROWS:
                run.log({path.stem: wandb.Table(dataframe=df)})
            else:
                artifact = wandb.Artifact(f"{run.id}-{path.stem}", type="table")
                artifact.add_file(str(path))
                run.log_artifact(artifact)
        for doc in sorted(run_dir.glob("*.json")):
            run.summary[doc.stem] = json.loads(doc.read_text())
        for png in sorted(run_dir.glob("*.png")):
            run.log({png.stem: wandb.Image(str(png))})
        run.summary["complete"] = bool(status.get("complete"))
        if status.get("objective") is not None:
            run.summary["objective"] = float(status["objective"])

    def finish(self, exit_code: int) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
