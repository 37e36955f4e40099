"""``experiment=calibrate``: measure this machine's tiers, per-model build / first-token times and each runtime's
start-up costs with real loads, and write the calibration YAML that ``cluster=calibrated
cluster.calibration=PATH`` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, open_dict

from experiments.loading import experiment as loading
from experiments.loading.suite import check_cells, copy_config, run_cells
from harness.config import ConfigError, name_list
from harness.experiment import ExperimentResult

# simulator tier ← the loading experiment's cache state that reads from it
TIER_STATE = {"ssd": "cold", "dram": "hot", "remote": "remote", "page_cache": "warm"}


def _median(ok: pd.DataFrame, state: str, col: str) -> float | None:
    rows = ok[ok["cache_state"] == state]
    return float(rows[col].median()) if len(rows) else None


def _gpu(env: dict[str, Any]) -> dict[str, Any] | None:
    gpu = env.get("gpu")
    if not gpu:
        return None
    return {"type": gpu["name"], "mem_gb": round(gpu["memory_bytes"] / 1e9, 1), "count": gpu["count"]}


def _machine(env: dict[str, Any]) -> str:
    gpu = env.get("gpu")
    gpu_text = f"{gpu['count']}x {gpu['name']}" if gpu else "no GPU"
    disk = env.get("disk") or {}
    return (f"{env.get('cpu_model')} ({env.get('cpu_count')} cores), {env.get('memory_bytes', 0) / 2**30:.0f} GiB RAM, "
            f"{gpu_text}, checkpoints on {disk.get('device')} ({disk.get('fstype')})")


def _sig(x: float, digits: int = 5) -> float:
    """``x`` to ``digits`` significant figures: a fixed number of decimals would cut a slow tier's (or a tiny
    model's) bandwidth to two or three figures and make the file disagree with the trials it came from."""
    return float(f"{float(x):.{digits}g}")


def calibration_document(trials: pd.DataFrame, ceilings: dict[str, Any], env: dict[str, Any],
                         loader_name: str, link_gbps: float | None) -> dict[str, Any]:
    """The calibration file's content from one calibrate run's trials (schema in docs/serverless.md).

    A tier's ``bw_gbps`` is the median throughput (GB/s) of ``loader_name`` loading the largest model from that
    tier, to the device the run used: what a cold start from the tier really achieves, not a raw device number
    (those are kept beside it as ``ceiling_gbps``). A tier the run could not exercise is ``absent`` with why.
    """
    ok = trials[trials["ok"].astype(bool) & (trials["loader"] == loader_name)]
    largest = str(ok.sort_values("bytes")["model"].iloc[-1]) if len(ok) else None
    big = ok[ok["model"] == largest]
    cell: dict[str, Any] = next((v for k, v in ceilings.items() if k.split(" ")[0] == largest), {})
    cell_ceilings = dict(cell.get("gbps", {}))
    tiers: dict[str, Any] = {}
    for tier, state in TIER_STATE.items():
        bw = _median(big, state, "throughput_gbps")
        if bw is not None and np.isfinite(bw):
            ceiling = _median(big, state, "ceiling_gbps")
            tiers[tier] = {"bw_gbps": _sig(bw), "source": f"{loader_name} {state} loads of {largest}",
                           "ceiling_gbps": _sig(ceiling) if ceiling and np.isfinite(ceiling) else None}
        elif tier == "remote" and link_gbps:
            tiers[tier] = {"bw_gbps": float(link_gbps), "source": "configured link (link_gbps), not measured"}
        else:
            tiers[tier] = {"absent": True, "reason": f"no successful {state} load of {loader_name} in this run"}
    h2d = cell_ceilings.get("h2d_pinned")
    tiers["h2d"] = ({"bw_gbps": _sig(h2d), "source": "pinned host→device copy ceiling"} if h2d
                    else {"absent": True, "reason": "no CUDA device"})
    models: dict[str, Any] = {}
    has_runtimes = "runtime" in ok and "t_handoff_s" in ok
    # a pool's warmed-up workers may build faster: the models' times are the fresh baseline's when the run has it
    baseline = ok[ok["runtime"] == "fresh"] if has_runtimes and (ok["runtime"] == "fresh").any() else ok
    for model, group in baseline.groupby("model", sort=True):
        memory = group[group["cache_state"].isin(["warm", "hot"])]
        src = memory if len(memory) else group
        models[str(model)] = {**_build_times(src), "bytes": int(group["bytes"].iloc[0])}
    doc: dict[str, Any] = {"machine": _machine(env), "device": str(ok["device"].iloc[0]) if len(ok) else None,
                           "tiers": tiers, "models": models, "ceilings_gbps": cell_ceilings}
    if has_runtimes:
        doc["runtimes"] = runtimes_section(trials, ok, env.get("runtimes") or {}, loader_name)
    gpu = _gpu(env)
    if gpu:
        doc["gpu"] = gpu
    return doc


ENGINE_PHASES = {"kv_alloc_s": "t_kv_alloc_s", "compile_s": "t_compile_s", "graph_capture_s": "t_graph_capture_s"}


def _build_times(rows: pd.DataFrame) -> dict[str, Any]:
    """A model's ``build_s`` and ``first_token_s`` and, per engine of the run, its set-up phases and ``tpot_s``
    (medians; never pooled across engines). With one engine, ``engine_s`` is its set-up (``ModelTimes.engine_s``);
    with several, calibrate with the one to simulate (``engines=[compiled]``)."""
    rows = rows.assign(engine=rows.get("engine", "eager"))
    engines = sorted(map(str, rows["engine"].dropna().unique()))
    base = rows[rows["engine"] == ("eager" if "eager" in engines else engines[0])]
    out: dict[str, Any] = {"build_s": _sig(float(base["t_model_build_s"].median())),
                           "first_token_s": _sig(float(base["t_first_token_s"].median()))}
    per_engine: dict[str, Any] = {}
    for name, g in rows.groupby("engine", sort=True):
        phases = {k: _sig(float(g[c].median())) if c in g else 0.0 for k, c in ENGINE_PHASES.items()}
        tpot = float(g["tpot_s"].median()) if "tpot_s" in g else float("nan")
        per_engine[str(name)] = {**phases, "first_token_s": _sig(float(g["t_first_token_s"].median())),
                                 "tpot_s": _sig(tpot) if np.isfinite(tpot) else None}
    out["engines"] = per_engine
    if len(engines) == 1:
        (only,) = per_engine.values()
        out["engine_s"] = _sig(sum(float(only[k]) for k in ENGINE_PHASES))
    return out


def runtimes_section(trials: pd.DataFrame, ok: pd.DataFrame, described: dict[str, Any],
                     loader_name: str) -> dict[str, Any]:
    """The calibration file's ``runtimes``: per runtime of the run, what getting a ready process cost its cold starts
    (``ok``: the successful trials of ``loader_name``; ``described``: each runtime's ``describe()``).

    ``handoff_s``: median spawn → a ready process holds the spec; ``startup_s`` per model: median hand-off + imports
    + device init (what a ``fresh`` cluster pays per cold start); for a pool also ``size`` and ``worker_start_s``,
    the median seconds its workers took to start (imports, device init, warm-up). A runtime without a successful
    trial is ``absent`` with why.
    """
    names = list(dict.fromkeys([*map(str, described), *map(str, trials["runtime"].dropna())]))
    section: dict[str, Any] = {}
    for name in names:
        info = described.get(name) or {}
        kind = str(info.get("name", name))
        rows = ok[ok["runtime"] == name]
        if not len(rows):
            section[name] = {"kind": kind, "absent": True, "reason": f"no successful {loader_name} trial of runtime "
                                                                     f"{name} in this run"}
            continue
        startup = (rows["t_handoff_s"] + rows["t_imports_s"] + rows["t_device_init_s"]).groupby(rows["model"]).median()
        entry: dict[str, Any] = {
            "kind": kind, "handoff_s": _sig(float(rows["t_handoff_s"].median())),
            "startup_s": {str(m): _sig(float(v)) for m, v in startup.sort_index().items()},
            "source": f"{len(rows)} {loader_name} cold starts"}
        if kind == "pool":
            starts = [float(x) for x in info.get("start_s") or []]
            entry["size"] = int(info["size"]) if info.get("size") is not None else None
            entry["worker_start_s"] = _sig(float(np.median(starts))) if starts else None
            entry["worker_starts"] = len(starts)
            entry["prepared_engines"] = bool(info.get("prepare_engines", False))
        section[name] = entry
    return section


def _merge_runtimes(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The cells' ``environment.runtimes`` as one: each cell started its own runtimes, so the pool worker starts
    (``start_s``) of every cell count, not only the last cell's."""
    merged: dict[str, Any] = {}
    for described in cells:
        for name, info in described.items():
            starts = [*merged.get(name, {}).get("start_s", []), *(info.get("start_s") or [])]
            merged[name] = {**info, **({"start_s": starts} if starts else {})}
    return merged


def run(cfg: DictConfig, out_dir: Path) -> ExperimentResult:
    """Real loads of each model from every tier this machine has; the calibration as ``calibration.yaml``."""
    states = [s for s in name_list(cfg, "cache_states") if s in loading.STATES]
    if not (cfg.storage.get("remote_url") and "remote" in states) and not cfg.get("link_gbps") and not cfg.smoke:
        raise ConfigError("calibrate: the simulator needs the remote store's bandwidth, and this run cannot measure "
                          "it (storage has no remote_url, or cache_states lacks remote): measure it with "
                          "storage=remote, or state it with link_gbps=GB/s (e.g. link_gbps=1.25 for a 10 Gbps link)")
    models: list[str | None] = [None] if cfg.smoke else list(name_list(cfg, "models"))
    check_cells(cfg, None if cfg.smoke else name_list(cfg, "models"))
    sub = copy_config(cfg)
    with open_dict(sub):
        sub.cache_states = states
    described: list[dict[str, Any]] = []

    def cell(cell_cfg: DictConfig, cell_dir: Path) -> ExperimentResult:
        out = loading.run_cell(cell_cfg, cell_dir)
        described.append(out.documents.get("environment", {}).get("runtimes") or {})
        return out

    result = run_cells(sub, out_dir, [(m, str(cfg.dtype)) for m in models], runner=cell)
    env = {**result.documents.get("environment", {}), "runtimes": _merge_runtimes(described)}
    result.documents["calibration"] = calibration_document(
        result.tables["trials"], result.documents.get("ceilings", {}), env, name_list(cfg, "loaders")[0],
        float(cfg.link_gbps) if cfg.get("link_gbps") else None)
    return result
