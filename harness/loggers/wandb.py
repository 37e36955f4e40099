"""Weights & Biases sink: config, per-trial/request tables, summary and figures of a finished run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

MODES = ("auto", "online", "offline", "disabled")


class WandbLogger:
    """Logs a run to W&B; ``mode=auto`` runs offline unless WANDB_API_KEY is set. wandb is imported lazily."""

    def __init__(self, project: str = "coldstart", entity: str | None = None, mode: str = "auto",
                 tags: list[str] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"logger.mode={mode!r}; choose one of {MODES}")
        self.project, self.entity, self.mode, self.tags = project, entity, mode, list(tags or [])

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def log_run(self, cfg: DictConfig, run_dir: Path) -> Any:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("logger=wandb needs the wandb package: pip install 'coldstart[wandb]'") from exc
        config = OmegaConf.to_container(cfg, resolve=True)
        run = wandb.init(project=self.project, entity=self.entity, mode=self.resolved_mode(),  # type: ignore[arg-type]
                         dir=str(run_dir), config=config,  # type: ignore[arg-type]
                         name=f"{cfg.experiment.name}/{run_dir.name}", tags=self.tags, reinit="finish_previous")
        for stem in ("trials", "requests"):
            path = run_dir / f"{stem}.parquet"
            if path.exists():
                run.log({stem: wandb.Table(dataframe=pd.read_parquet(path))})
        summary = run_dir / "summary.csv"
        if summary.exists():
            df = pd.read_csv(summary)
            run.log({"summary": wandb.Table(dataframe=df)})
        for doc in ("ceilings", "environment"):
            path = run_dir / f"{doc}.json"
            if path.exists():
                run.summary[doc] = json.loads(path.read_text())
        for png in sorted(run_dir.glob("*.png")):
            run.log({png.stem: wandb.Image(str(png))})
        run.finish()
        return run
