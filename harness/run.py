"""The Hydra entry point: compose the config, run the chosen experiment, write results, plot, log."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.config import CONF_DIR, ConfigError, RunRecord, recording, register_schema
from harness.experiment import ExperimentFailedError, ExperimentResult, PartialResult
from harness.loggers.base import Logger
from harness.results import write_json, write_result
from harness.runfolder import write_description
from harness.summary import console_table, objective

log = logging.getLogger("coldstart")


class OnceFilter(logging.Filter):
    """Lets each distinct warning (logger, level, text) through once per run; repeats are counted, not printed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        self.seen[key] = self.seen.get(key, 0) + 1
        return self.seen[key] == 1

    def repeats(self) -> int:
        return sum(n - 1 for n in self.seen.values())


def _user_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """What a user's configuration or machine can cause and one line explains (no traceback): an unknown or unread
    key, a bad value, a checkpoint directory that cannot be written. Imported here: harness.checkpoints needs torch,
    which a command refused at its start never imports."""
    from harness.checkpoints import CheckpointWriteError

    return (ConfigError, ValueError, CheckpointWriteError, *extra)


def _status(complete: bool, error: str, objective_value: float | None = None) -> dict[str, Any]:
    value = None if objective_value is None or math.isnan(objective_value) else objective_value
    return {"complete": complete, "error": error, "objective": value}


def _plot(cfg: DictConfig, out_dir: Path) -> list[Path]:
    if cfg.experiment.get("plot") is None:
        return []
    plot = instantiate(cfg.experiment.plot)
    try:
        figures: list[Path] = plot(out_dir)
        return figures
    except Exception as exc:  # a broken figure must not lose the measured tables
        log.error("plotting failed for %s: %s", out_dir, exc)
        return []


def _finish(cfg: DictConfig, out_dir: Path, result: ExperimentResult, sink: Logger, complete: bool,
            error: str, record: RunRecord | None = None) -> dict[str, Any]:
    """Write what was measured (complete or not), what ran (``config.yaml``: harness.runfolder), its status and
    figures; log it; print the short table."""
    write_description(out_dir / "config.yaml", cfg, record)
    write_result(out_dir, result)
    summary = result.tables.get("summary")
    value = math.nan
    if summary is not None and len(summary):
        try:
            value = objective(summary, cfg.experiment.get("objective"))
        except ValueError as exc:
            log.error("objective: %s", exc)
    status = _status(complete, error, value)
    write_json(out_dir / "status.json", status)
    figures = _plot(cfg, out_dir)
    sink.log_run(cfg, out_dir, status)
    if summary is not None and len(summary):
        columns = cfg.experiment.get("console")
        print(console_table(summary, list(columns) if columns else None), flush=True)
    where = ", ".join(str(p) for p in figures if p.suffix == ".png") or "no figures"
    print(f"{'' if complete else 'INCOMPLETE (' + error + '): '}results in {out_dir} ({where})", flush=True)
    return status


def _check_typed(cfg: DictConfig) -> None:
    """In the app (a run, or a job of a multirun that a sweeper plugin may have composed): what was typed must be
    read by this experiment (``harness.overrides.check_reads``), whoever launched the job."""
    if not HydraConfig.initialized():
        return
    from harness.overrides import check_reads, parse

    check_reads(cfg, parse(list(HydraConfig.get().overrides.task)))


def run_experiment(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Run ``cfg.experiment`` into ``out_dir``: tables and documents, ``status.json``, figures, the logger sink.

    An experiment that stops early (Ctrl-C, an exception) hands back what it measured as a ``PartialResult``: that is
    written with ``complete: false`` before the cause is raised again. Any other failure still leaves ``status.json``
    with the error (and the traceback in ``run.log``). ``config.yaml`` is the composed config at the start and what
    ran (the keys read, every listed option as it ran) once results are written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    sink: Logger = instantiate(cfg.logger)
    sink.start(cfg, out_dir)
    exit_code = 1
    try:
        _check_typed(cfg)
        experiment = instantiate(cfg.experiment.run)
        with recording() as record:
            try:
                result: ExperimentResult = experiment(cfg, out_dir)
            except PartialResult as partial:
                log.error("stopped early (%r): writing what was measured", partial.cause)
                _finish(cfg, out_dir, partial.result, sink, False, repr(partial.cause), record)
                raise partial.cause from None
        if result.failure:  # it ran but measured nothing (every cell infeasible): tables say why, exit non-zero
            _finish(cfg, out_dir, result, sink, False, result.failure, record)
            raise ExperimentFailedError(f"experiment {cfg.experiment.name} produced no results: {result.failure} "
                                        f"(tables in {out_dir})")
        status = _finish(cfg, out_dir, result, sink, True, "", record)
        result.documents["status"] = status
        exit_code = 0
        return result
    except KeyboardInterrupt:
        exit_code = 130
        if not (out_dir / "status.json").exists():
            write_json(out_dir / "status.json", _status(False, "KeyboardInterrupt()"))
        raise
    except BaseException as exc:
        if not (out_dir / "status.json").exists():
            write_json(out_dir / "status.json", _status(False, repr(_user_error(exc))))
        if not isinstance(_user_error(exc), (*_user_errors(), ExperimentFailedError)):  # one line each (_main)
            log.exception("run failed: %r", exc)
        raise
    finally:
        sink.finish(exit_code)


def _user_error(exc: BaseException) -> BaseException:
    """The error a user caused: a ``ValueError`` a class raised while Hydra instantiated it (Hydra wraps it in an
    ``InstantiationException``), else ``exc`` itself."""
    if isinstance(exc, InstantiationException) and isinstance(exc.__cause__, ValueError):
        return exc.__cause__
    return exc


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> float:
    """One run (or one job of a multirun); returns the experiment's objective, for Hydra's sweeper plugins."""
    filters = [OnceFilter() for _ in logging.getLogger().handlers]  # one per handler: each sees every record
    for handler, once in zip(logging.getLogger().handlers, filters, strict=True):
        handler.addFilter(once)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_experiment(cfg, out_dir)
    except _user_errors(InstantiationException) as raised:  # what was typed cannot run: one line
        exc = _user_error(raised)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not isinstance(exc, _user_errors()):
            raise
        log.error("%s: %s (HYDRA_FULL_ERROR=1 shows the traceback)", type(exc).__name__, exc)
        sys.exit(2)
    except ExperimentFailedError as exc:  # it ran and wrote its tables, but nothing was measured: say why
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", exc)
        sys.exit(1)
    finally:
        repeats = max((f.repeats() for f in filters), default=0)
        if repeats:
            log.info("%d repeated warnings were shown once each", repeats)
    value = result.documents["status"]["objective"]
    return math.nan if value is None else float(value)


def _argv_overrides(argv: list[str]) -> tuple[list[str], list[int]] | None:
    """The overrides among Hydra's command-line arguments and their positions in ``argv``; None for a command that
    composes nothing to check (``--help``, ``--info``, shell completion) or one Hydra will refuse itself."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return None
    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun:
        return None
    if args.config_path or args.config_name or args.config_dir:
        return None  # another primary config: Hydra composes it itself
    positions = [i for i, word in enumerate(argv) if word in args.overrides]
    return list(args.overrides), positions


def _from_run(argv: list[str]) -> list[str]:
    """``--from-run DIR [flags and overrides]`` → the overrides that compose DIR's run as it ran, then the rest."""
    from harness.runfolder import repeat_overrides

    first, rest = argv[0], argv[1:]
    if "=" in first:
        where = first.split("=", 1)[1]
    elif rest:
        where, rest = rest[0], rest[1:]
    else:
        print("coldstart: --from-run needs a run folder: coldstart --from-run results/runs/<experiment>/<time>",
              file=sys.stderr)
        sys.exit(2)
    found = _argv_overrides(rest)
    extra = found[0] if found else []
    flags = [w for i, w in enumerate(rest) if not found or i not in found[1]]
    try:
        overrides = repeat_overrides(Path(where), extra)
    except ConfigError as exc:
        print(f"coldstart: {exc}", file=sys.stderr)
        sys.exit(2)
    log.info("repeating %s: %s", where, " ".join(overrides))
    return [*flags, *overrides]


def main() -> None:
    """Console script ``coldstart``: what was typed is composed and checked first (one line and exit 2 on a
    configuration error, whichever layer finds it), then Hydra runs it; Ctrl-C ends with one line (exit 130)."""
    from harness.overrides import preflight

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
    register_schema()
    if len(sys.argv) > 1 and sys.argv[1].startswith("--from-run"):
        sys.argv[1:] = _from_run(sys.argv[1:])
    found = _argv_overrides(sys.argv[1:])
    if found is not None and os.environ.get("HYDRA_FULL_ERROR") != "1":
        words, positions = found
        try:
            checked = preflight(words)
        except ConfigError as exc:
            print(f"coldstart: {exc}", file=sys.stderr)
            sys.exit(2)
        for pos, word in zip(positions, checked, strict=True):  # bare words given to list keys, now lists
            sys.argv[1 + pos] = word
    try:
        _main()
    except ValueError as exc:  # Hydra's refusal of the command line itself (e.g. -m with --cfg)
        print(f"coldstart: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("coldstart: stopped by Ctrl-C (what was measured is written; status.json says complete: false)",
              file=sys.stderr)
        sys.exit(130)
