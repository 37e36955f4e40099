"""The Hydra entry point: compose the config, run the chosen experiment, write results, plot, log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.config import CONF_DIR, register_schema
from harness.experiment import ExperimentFailedError, ExperimentResult
from harness.results import write_result

log = logging.getLogger("coldstart")


def run_experiment(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Run ``cfg.experiment`` into ``out_dir``: tables and documents, then figures, then the logger sink."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    experiment = instantiate(cfg.experiment.run)
    result: ExperimentResult = experiment(cfg, out_dir)
    write_result(out_dir, result)
    if result.failure:
        raise ExperimentFailedError(f"experiment {cfg.experiment.name} produced no results: {result.failure} "
                                    f"(tables in {out_dir})")
    figures: list[Path] = []
    if cfg.experiment.get("plot") is not None:
        plot = instantiate(cfg.experiment.plot)
        try:
            figures = plot(out_dir)
        except Exception as exc:  # a broken figure must not lose the measured tables
            log.error("plotting failed for %s: %s", out_dir, exc)
    sink = instantiate(cfg.logger)
    sink.log_run(cfg, out_dir)
    log.info("results in %s (%s)", out_dir, ", ".join(p.name for p in figures) or "no figures")
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run_experiment(cfg, out_dir)


def main() -> None:
    """Console script ``coldstart``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
    register_schema()
    _main()
