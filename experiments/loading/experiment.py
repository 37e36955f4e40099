"""The loading experiment: loaders × cache states × runtimes × engines × compile caches × trials, bounded by
same-run ceilings."""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from engines.compilecache import STATES as COMPILE_STATES
from experiments.loading.metrics import PHASES, summarize_trials
from harness import environment
from harness.ceilings import STATE_CEILING, bounding_ceiling, measure_ceilings
from harness.checkpoints import Checkpoint, CheckpointError, CheckpointStore
from harness.config import check_args, listed, name_list
from harness.executors.base import TrialError
from harness.experiment import ExperimentResult, PartialResult
from loaders.base import PreparedLoader, RemoteTieredLoader, TieredLoader
from loaders.pagecache import evict, make_copies, resident_fraction, warm
from runtimes.base import Runtime, RuntimeContext

log = logging.getLogger("coldstart.loading")

COLD_METHODS = ("auto", "fadvise", "copies")


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device={name!r}; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


STATES = ("cold", "warm", "hot", "remote")
DEFAULT_TIER = {"cold": "ssd", "warm": "page_cache", "hot": "dram", "remote": "remote"}


@dataclass
class _LoaderCell:
    name: str
    cfg: dict[str, Any]
    fmt: str | None
    unavailable: str | None
    loader: Any = None


def smoke_loaders(names: list[str]) -> list[str]:
    """``smoke=true``: ours and the first other loader, so a smoke run takes seconds (every loader runs in its own
    tests; each trial is a fresh interpreter, ~4 s of imports here)."""
    return ([n for n in names if n == "native"] + [n for n in names if n != "native"])[:2]


def loader_bases(names: list[str], variants: dict[str, Any] | None = None) -> list[str]:
    """The ``conf/loader`` option behind each listed name (a variant names its ``base``)."""
    variants = variants or {}
    return [str(variants[n]["base"]) if n in variants else n for n in names]


def _loader_cells(cfg: DictConfig, names: list[str], variants: dict[str, Any] | None = None) -> list[_LoaderCell]:
    """One cell per name: a ``conf/loader`` option, or a variant ``{base: option, overrides: {...}}`` (ablations),
    composed by Hydra with the run's ``loader_args.<option>`` overrides."""
    cells = []
    variants = variants or {}
    for name, base in zip(names, loader_bases(names, variants), strict=True):
        entry = (variants.get(name) or {}).get("overrides")
        cfg_node = listed(cfg, "loader", base, entry)
        loader = instantiate(cfg_node)
        try:
            loader.check_available()
            reason = None
        except Exception as exc:  # LoaderUnavailableError: recorded as an unavailable cell, never dropped
            reason = str(exc)
        resolved = OmegaConf.to_container(cfg_node, resolve=True)
        assert isinstance(resolved, dict)
        cells.append(_LoaderCell(name, cast(dict[str, Any], resolved), loader.formats[0] if loader.formats else None,
                                 reason, loader))
    return cells


class _ColdSource:
    """Hands out the directory a cold trial loads from: the evicted original, or a never-read distinct copy."""

    def __init__(self, method: str, max_resident: float, copies_root: Path) -> None:
        if method not in COLD_METHODS:
            raise ValueError(f"cold_method={method!r}; choose one of {COLD_METHODS}")
        self.method = method
        self.max_resident = max_resident
        self.copies_root = copies_root
        self.fallback_reason: str | None = None
        self._copies: dict[str, list[Path]] = {}

    def prepare(self, ckpt: Checkpoint, copies_needed: int, rng: random.Random) -> tuple[Path, float, str]:
        if self.method != "copies":
            resident = evict(ckpt.files)
            if self.method == "fadvise" or resident <= self.max_resident:
                return ckpt.path, resident, "fadvise"
            self.method = "copies"
            self.fallback_reason = (f"posix_fadvise left {resident:.1%} of {ckpt.path.name} resident "
                                    f"(> {self.max_resident:.1%}); falling back to distinct copies")
            log.warning(self.fallback_reason)
        key = ckpt.path.name
        if key not in self._copies:
            made = make_copies(ckpt.path, self.copies_root / key, copies_needed)
            rng.shuffle(made)
            self._copies[key] = made
        if not self._copies[key]:
            raise RuntimeError(f"no unused copy of {key} left for a cold trial")
        path = self._copies[key].pop()
        resident = evict(p for p in path.iterdir() if p.is_file())
        return path, resident, "copies"

    def cleanup(self) -> None:
        shutil.rmtree(self.copies_root, ignore_errors=True)


@dataclass(frozen=True)
class _Model:
    """The run's model as every row describes it: the spec, the dtype it runs at, where its weights come from
    (``model_source``, ``model_path``, stored dtype and cast) and the prompt (ids; text when it has a tokenizer)."""

    spec: Any
    dtype: str
    columns: dict[str, Any]
    prompt_ids: list[int]

    @classmethod
    def of(cls, cfg: DictConfig) -> _Model:
        spec = instantiate(cfg.model)
        dtype = spec.resolve_dtype(str(cfg.dtype))
        ids, text = spec.prompt(str(cfg.get("prompt_text") or ""), int(cfg.prompt_tokens))
        src = spec.describe_source()
        columns = {"model_source": src["model_source"], "model_path": src["model_path"], **spec.dtype_info(dtype),
                   "prompt_text": text}
        return cls(spec, dtype, columns, ids)

    def trial_config(self, cfg: DictConfig) -> dict[str, Any]:
        own = self.spec.trial_config()
        return own if own is not None else cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))


def _row_base(model: _Model, device: torch.device, cell: _LoaderCell, state: str, runtime: str,
              engine: tuple[str, str], trial: int) -> dict[str, Any]:
    return {"model": model.spec.name, "dtype": model.dtype, "device": device.type, "loader": cell.name,
            "format": cell.fmt, "cache_state": state, "runtime": runtime, "engine": engine[0],
            "compile_cache": engine[1], "trial": trial, **model.columns}


def _trial_row(base: dict[str, Any], out: dict[str, Any], ckpt: Checkpoint, ceiling: tuple[str, float | None],
               resident: float | None, cold_method: str | None) -> dict[str, Any]:
    m = out["marks"]
    load_s = m["weights"] - m["device_init"]
    row = {**base, "ok": True, "status": "ok", "error": "", "bytes": ckpt.total_bytes, "load_s": load_s,
           "throughput_gbps": ckpt.total_bytes / load_s / 1e9 if load_s > 0 else np.nan,
           "ceiling_name": ceiling[0], "ceiling_gbps": ceiling[1] if ceiling[1] is not None else np.nan,
           "resident_fraction": resident if resident is not None else np.nan, "cold_method": cold_method or "",
           "t_handoff_s": m["handoff"] - m["spawn"], "t_imports_s": m["imports"] - m["handoff"],
           "t_device_init_s": m["device_init"] - m["imports"],
           "t_weights_s": load_s, "t_model_build_s": m["model_build"] - m["weights"],
           "t_kv_alloc_s": m["kv_alloc"] - m["model_build"], "t_compile_s": m["compile"] - m["kv_alloc"],
           "t_graph_capture_s": m["graph_capture"] - m["compile"],
           "t_first_token_s": m["first_token"] - m["graph_capture"], "cold_start_s": m["first_token"] - m["spawn"],
           "t_python_start_s": m["python"] - m["spawn"], "first_token_id": out["first_token_id"],
           "first_token_text": out.get("first_token_text", ""),
           "verified_bytes": out.get("verified_bytes", np.nan), "peak_rss_bytes": out.get("peak_rss_bytes", np.nan),
           "loader_settle_s": out.get("loader_settle_s", 0.0)}
    row["ceiling_fraction"] = row["throughput_gbps"] / row["ceiling_gbps"] if row["ceiling_gbps"] else np.nan
    for k, v in out.get("loader_phases_s", {}).items():
        row[f"loader_{k}"] = v
    for k, v in (out.get("loader_info") or {}).items():  # labels: the native loader's read path and why
        row[f"loader_{k}"] = v
    for k, v in out.get("bytes_by_tier", {}).items():
        row[f"bytes_{k}"] = v
    for k, v in (out.get("worker") or {}).items():  # a pool worker's memory before and after, its uses
        row[f"worker_{k}"] = v
    if "retried" in out:
        row["retried"] = out["retried"]
    if "swap_verified_bytes" in out:  # a prepared engine's parameters, checked equal to the verified tensors
        row["swap_verified_bytes"] = out["swap_verified_bytes"]
    steps = out.get("decode_s") or []
    row["decode_tokens"] = len(steps)
    row["tpot_s"] = float(np.median(steps)) if steps else np.nan  # median time per output token
    for k, v in (out.get("engine") or {}).items():
        if k != "name":
            row[k] = v
    return row


def _failed_row(base: dict[str, Any], status: str, error: str) -> dict[str, Any]:
    return {**base, "ok": False, "status": status, "error": error}


def listed_runtimes(cfg: DictConfig) -> list[str]:
    """The runtimes this run compares (``runtimes=[fresh,forkserver,pool]``; default ``[fresh]``)."""
    names = name_list(cfg, "runtimes", ["fresh"])
    if len(set(names)) != len(names):
        raise ValueError(f"runtimes={names} lists a runtime twice")
    return names


NO_COMPILE = "none"  # the compile_cache of an engine that compiles nothing (one cell, whatever the axis lists)


def listed_engines(cfg: DictConfig) -> list[str]:
    """The engines this run compares (``engines=[eager,compiled]``; default ``[eager]``)."""
    names = name_list(cfg, "engines", ["eager"])
    if len(set(names)) != len(names):
        raise ValueError(f"engines={names} lists an engine twice")
    return names


def listed_compile_caches(cfg: DictConfig) -> list[str]:
    """The compile-cache states this run compares (``compile_caches=[cold,warm]``; default ``[cold]``)."""
    names = name_list(cfg, "compile_caches", ["cold"])
    bad = [n for n in names if n not in COMPILE_STATES]
    if bad or len(set(names)) != len(names) or not names:
        raise ValueError(f"compile_caches={names}; list each of {COMPILE_STATES} at most once")
    return names


@dataclass
class _EngineCell:
    """A listed engine: its composed option (what a trial instantiates) and the built object (its checks)."""

    name: str
    cfg: dict[str, Any]
    engine: Any

    def states(self, compile_caches: list[str]) -> list[str]:
        return compile_caches if self.engine.compiles else [NO_COMPILE]


def engine_cells(cfg: DictConfig, names: list[str], device: torch.device) -> list[_EngineCell]:
    """Build each listed ``conf/engine`` option (with the run's ``engine_args.<name>``) and refuse, before anything
    starts, one the device cannot run (``graphs`` on CPU: ``EngineUnsupportedError``, one line, exit 2)."""
    cells = []
    for name in names:
        node = listed(cfg, "engine", name)
        engine = instantiate(node)
        engine.check(str(device))
        resolved = OmegaConf.to_container(node, resolve=True)
        assert isinstance(resolved, dict)
        cells.append(_EngineCell(name, cast(dict[str, Any], resolved), engine))
    return cells


def start_runtimes(cfg: DictConfig, names: list[str], ctx: RuntimeContext) -> dict[str, Runtime]:
    """Build and start each listed ``conf/runtime`` option (with the run's ``runtime_args.<name>``); on a failure
    the ones already started are closed."""
    built: dict[str, Runtime] = {name: instantiate(listed(cfg, "runtime", name)) for name in names}
    for rt in built.values():  # every refusal (forkserver on CUDA) before any runtime starts a process
        rt.check(ctx)
    started: dict[str, Runtime] = {}
    try:
        for name, rt in built.items():
            log.info("starting runtime %s", name)
            rt.start(ctx)
            started[name] = rt
    except BaseException:
        close_runtimes(started)
        raise
    return started


def close_runtimes(runtimes: dict[str, Runtime]) -> None:
    for rt in runtimes.values():
        rt.close()


def listed_loaders(cfg: DictConfig) -> tuple[list[str], dict[str, Any] | None]:
    """The loader names this run measures (``smoke=true``: two of them) and the ablation variants, if any."""
    node = cfg.get("loader_variants")
    variants = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True)) if node else None
    names = name_list(cfg, "loaders")
    if cfg.smoke and not variants:
        names = smoke_loaders(names)
    return names, variants


def run(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """``experiment=loading``: the composed model, every listed loader (see conf/experiment/loading.yaml)."""
    names, variants = listed_loaders(cfg)
    check_args(cfg, {"loader": loader_bases(names, variants), "runtime": listed_runtimes(cfg),
                     "engine": listed_engines(cfg)}, singles=("model",))
    return run_cell(cfg, out_dir)


def run_cell(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """One model and dtype: loaders × cache states × trials, after the caller checked the run's overrides."""
    device = resolve_device(cfg.device)
    trials = 1 if cfg.smoke else int(cfg.trials)
    if trials < 1:
        raise ValueError(f"trials={trials}; need at least 1")
    states = name_list(cfg, "cache_states")
    for s in states:
        if s not in STATES:
            raise ValueError(f"cache_states contains {s!r}; this experiment supports {', '.join(STATES)}")
    engines = engine_cells(cfg, listed_engines(cfg), device)  # graphs on CPU refused here, before any work
    compile_caches = listed_compile_caches(cfg)
    model = _Model.of(cfg)
    store: CheckpointStore = instantiate(cfg.storage)
    executor = instantiate(cfg.executor)
    names, variants = listed_loaders(cfg)
    cells = _loader_cells(cfg, names, variants)
    rng = random.Random(cfg.seed)
    runtime_names = listed_runtimes(cfg)
    model_cfg = model.trial_config(cfg)
    ctx = RuntimeContext(executor, str(device), [c.cfg for c in cells if not c.unavailable], [model_cfg],
                         int(cfg.trial_threads) if cfg.get("trial_threads") else None, model.dtype,
                         [e.cfg for e in engines], list(model.prompt_ids), int(cfg.decode_tokens))
    runtimes = start_runtimes(cfg, runtime_names, ctx)  # forkserver refuses CUDA here, before any work
    try:
        return _run_trials(cfg, out_dir, device, trials, states, model, store, cells, rng, runtimes, model_cfg,
                           (engines, compile_caches, executor))
    finally:
        close_runtimes(runtimes)


def _run_trials(cfg: DictConfig, out_dir: Path, device: torch.device, trials: int, states: list[str], model: _Model,
                store: CheckpointStore, cells: list[_LoaderCell], rng: random.Random, runtimes: dict[str, Runtime],
                model_cfg: dict[str, Any], engine_axis: tuple[list[_EngineCell], list[str], Any]) -> ExperimentResult:
    spec = model.spec
    ckpts: dict[str, Checkpoint] = {}
    for fmt in sorted({c.fmt for c in cells if c.fmt and not c.unavailable}):
        ckpts[fmt] = store.ensure(spec, model.dtype, fmt, cfg.seed, progress=cfg.progress)
    if not ckpts:
        raise ValueError(f"none of loaders={list(cfg.loaders)} is available: "
                         + "; ".join(f"{c.name}: {c.unavailable}" for c in cells))

    ceiling_files = max(ckpts.values(), key=lambda c: c.total_bytes).files
    log.info("measuring ceilings on %s", ceiling_files[0].parent)
    ceilings = measure_ceilings(ceiling_files, device, threads=int(cfg.ceiling_threads),
                                max_bytes=int(cfg.ceiling_max_bytes))
    remote_gap = None if store.remote_url else "storage has no remote_url: choose storage=remote"
    if "remote" in states and not remote_gap:  # the remote ceiling: a plain parallel range download, same bytes
        from loaders.native.remote import remote_download

        biggest = max(ckpts.values(), key=lambda c: c.total_bytes)
        ceilings["remote_download"] = remote_download(store.url_for(biggest), [f.name for f in biggest.files],
                                                      int(cfg.ceiling_threads), max_bytes=int(cfg.ceiling_max_bytes))
        ceilings["gbps"]["remote_download"] = ceilings["remote_download"]["gbps"]
    log.info("ceilings (GB/s): %s", {k: round(v, 2) if v else v for k, v in ceilings["gbps"].items()})
    probes: dict[str, Any] = {}
    for cell in cells:  # loaders that measure this machine first (the native loader's read paths), before any trial
        if isinstance(cell.loader, PreparedLoader) and not cell.unavailable and cell.fmt in ckpts:
            probes[cell.name] = cell.loader.prepare(ckpts[cell.fmt].path, device)

    cold = _ColdSource(cfg.cold_method, float(cfg.max_resident_fraction), store.root / "copies" / out_dir.name)
    # distinct copies per checkpoint format: one per cold trial of the loaders reading that format
    engines, compile_caches, executor = engine_axis
    engine_by_name = {e.name: e for e in engines}
    variants = [(e.name, cc) for e in engines for cc in e.states(compile_caches)]
    copies_needed = {fmt: trials * len(runtimes) * len(variants)
                     * sum(1 for c in cells if c.fmt == fmt and not c.unavailable) for fmt in ckpts}
    names = list(runtimes)
    plan = [(t, s, c, r, v) for t in range(trials) for s in states for c in rng.sample(cells, len(cells))
            for r in rng.sample(names, len(names)) for v in rng.sample(variants, len(variants))]
    compile_root = store.root / "compile"  # compile artifacts beside the checkpoints (engines.compilecache)
    primed = _prime_compile_caches(cfg, executor, engines, compile_caches, model, model_cfg, ckpts, cells, device,
                                   compile_root)
    rows: list[dict[str, Any]] = []
    stopped: BaseException | None = None
    try:
        for trial, state, cell, rt_name, variant in tqdm(plan, desc=f"loading {spec.name} {model.dtype}",
                                                         disable=not cfg.progress):
            base = _row_base(model, device, cell, state, rt_name, variant, trial)
            if cell.unavailable or cell.fmt is None:
                rows.append(_failed_row(base, "unavailable", cell.unavailable or "no checkpoint format"))
                continue
            ckpt = ckpts[cell.fmt]
            tiered = isinstance(cell.loader, TieredLoader)
            if state == "hot" and not tiered:
                rows.append(_failed_row(base, "unavailable", f"loader {cell.name} has no DRAM tier (hot state)"))
                continue
            if state == "remote" and (remote_gap or not isinstance(cell.loader, RemoteTieredLoader)):
                rows.append(_failed_row(base, "unavailable", remote_gap or f"loader {cell.name} has no remote tier"))
                continue
            if state == "remote" and not ckpt.path.is_relative_to(store.root):
                rows.append(_failed_row(base, "unavailable", f"{ckpt.path} is read in place, and the remote store "
                                                             f"serves only the checkpoint store ({store.root})"))
                continue
            cold_method = None
            manifest_dir = None
            path: Path | str
            if state == "remote":  # starts on the server: no SSD-tier or DRAM-tier copy
                path, resident, manifest_dir = store.url_for(ckpt), None, str(ckpt.path)
                cell.loader.drop_remote_copies(path)
            elif state == "cold":
                path, resident, cold_method = cold.prepare(ckpt, copies_needed[cell.fmt], rng)
            elif state == "warm":
                path, resident = ckpt.path, warm(ckpt.files, fresh=True)
            else:
                path, resident = ckpt.path, resident_fraction(ckpt.files)
                try:  # the loader's own tier may refuse (too small a DRAM tier): a failed row, not a lost run
                    cell.loader.stage_in_dram(ckpt.path)
                except Exception as exc:
                    rows.append(_failed_row(base, "failed", f"staging in the DRAM tier failed: {exc}"))
                    log.error("%s hot trial %d: staging failed: %s", cell.name, trial, exc)
                    continue
            if tiered and state != "hot":
                cell.loader.unstage_from_dram(path)
            trial_spec = {"loader": cell.cfg, "model": model_cfg,
                          "checkpoint": str(path), "dtype": model.dtype, "device": str(device),
                          "prompt_tokens": int(cfg.prompt_tokens), "prompt_ids": model.prompt_ids,
                          "verify": bool(cfg.verify), "threads": cfg.get("trial_threads"),
                          "manifest_dir": manifest_dir,
                          "manifest": str(ckpt.manifest_file) if ckpt.manifest_file else None,
                          **_engine_spec(cfg, engine_by_name[variant[0]], variant[1], model, compile_root)}
            try:
                for rt in runtimes.values():  # no refill or restart runs during the measured cold start
                    rt.settle(float(cfg.trial_timeout_s))
                out = runtimes[rt_name].run_trial(trial_spec, float(cfg.trial_timeout_s))
            except (TrialError, CheckpointError) as exc:
                rows.append(_failed_row(base, "failed", str(exc)))
                log.error("%s %s %s %s trial %d failed: %s", cell.name, state, rt_name, variant[0], trial,
                          str(exc).splitlines()[-1])
                continue
            # where the bytes landed: a pool worker's pre-faulted arena (reused memory) or memory the load faulted in
            memory = "reused" if (out.get("loader_phases_s") or {}).get("arena") else "fresh"
            ceiling = bounding_ceiling(state, device, ceilings["gbps"], memory)
            out["first_token_text"] = spec.decode(out["first_token_id"])  # here: the trial needs no tokenizer
            row = _trial_row(base, out, ckpt, ceiling, resident, cold_method)
            row["ceiling_memory"] = memory if state == "cold" else ""  # the ceiling depends on it only cold
            if state == "cold" and ceilings["gbps"].get("disk_read"):  # the disk's own limit, whatever the memory
                row["disk_read_fraction"] = row["throughput_gbps"] / ceilings["gbps"]["disk_read"]
            by_tier: dict[str, int] = out.get("bytes_by_tier") or {}
            row["tier"] = max(by_tier, key=lambda k: by_tier[k]) if by_tier else DEFAULT_TIER[state]
            rows.append(row)
    except BaseException as exc:  # Ctrl-C or a failure: the trials measured so far are kept (status: incomplete)
        stopped = exc
    finally:
        cold.cleanup()
        for cell in cells:  # leave no staged copy behind in a shared DRAM tier
            if isinstance(cell.loader, TieredLoader) and cell.fmt in ckpts:
                cell.loader.unstage_from_dram(ckpts[cell.fmt].path)
            if "remote" in states and not remote_gap and isinstance(cell.loader, RemoteTieredLoader) \
                    and cell.fmt in ckpts:
                cell.loader.drop_remote_copies(store.url_for(ckpts[cell.fmt]))
    trials_df = pd.DataFrame(rows)
    for col in ("bytes", "load_s", "throughput_gbps", "ceiling_fraction", "tpot_s", *PHASES):
        if col not in trials_df:
            trials_df[col] = np.nan
    env = environment.collect(store.root)
    env["cold_method_fallback"] = cold.fallback_reason
    env["state_ceilings"] = {s: STATE_CEILING[s] for s in states}
    env["loader_probes"] = probes
    env["runtimes"] = {name: rt.describe() for name, rt in runtimes.items()}
    env["engines"] = {e.name: e.cfg for e in engines}
    env["compile_caches_primed"] = primed
    env["model"] = {"name": spec.name, "dtype": model.dtype, **spec.describe_source(), **model.columns,
                    "prompt_ids": model.prompt_ids}
    result = ExperimentResult(tables={"trials": trials_df, "summary": summarize_trials(trials_df)},
                              documents={"ceilings": ceilings, "environment": env})
    if stopped is not None:
        raise PartialResult(result, stopped) from stopped
    return result


def _engine_spec(cfg: DictConfig, engine: _EngineCell, compile_cache: str, model: _Model,
                 compile_root: Path) -> dict[str, Any]:
    """What a trial needs to run ``engine``: its option, the decode length, and where its compile cache lives."""
    out: dict[str, Any] = {"engine": engine.cfg, "decode_tokens": int(cfg.decode_tokens)}
    if compile_cache != NO_COMPILE:
        out["compile_cache"] = {"state": compile_cache, "root": str(compile_root), "dtype": model.dtype,
                                "architecture": {"name": model.spec.name, "arch": model.spec.arch,
                                                 "hf_config": model.spec.hf_config}}
    return out


def _prime_compile_caches(cfg: DictConfig, executor: Any, engines: list[_EngineCell],
                          compile_caches: list[str], model: _Model, model_cfg: dict[str, Any],
                          ckpts: dict[str, Checkpoint], cells: list[_LoaderCell], device: torch.device,
                          compile_root: Path) -> list[str]:
    """Before a run that measures warm compile caches: one untimed cold start per compiling engine in a fresh process
    (its row is not kept; a pool's prepared engine would compile nothing), so the first warm trial restores an
    artifact this machine and torch made; the engines primed."""
    if "warm" not in compile_caches:
        return []
    cell = next((c for c in cells if c.fmt in ckpts and not c.unavailable), None)
    if cell is None or cell.fmt is None:
        return []
    ckpt = ckpts[cell.fmt]
    primed = []
    for engine in engines:
        if not engine.engine.compiles:
            continue
        log.info("priming the compile cache of engine %s (an untimed cold start)", engine.name)
        spec = {"loader": cell.cfg, "model": model_cfg, "checkpoint": str(ckpt.path), "dtype": model.dtype,
                "device": str(device), "prompt_tokens": int(cfg.prompt_tokens), "prompt_ids": model.prompt_ids,
                "verify": False, "threads": cfg.get("trial_threads"),
                "manifest": str(ckpt.manifest_file) if ckpt.manifest_file else None,
                **_engine_spec(cfg, engine, "cold", model, compile_root)}
        spec["decode_tokens"] = 0
        executor.run_trial(spec, float(cfg.trial_timeout_s))
        primed.append(engine.name)
    return primed
