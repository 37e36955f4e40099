"""What the controller's helper threads do (blocking work); each posts its outcome back to the controller thread."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from harness.executors.workers import WorkerError, start_worker
from schedulers.real.lifecycle import migration_started
from schedulers.real.records import Req
from schedulers.real.serving import Stream, serve
from schedulers.real.slots import LiveInstance

if TYPE_CHECKING:
    from schedulers.real.controller import Controller


def load_job(ctl: Controller, inst: LiveInstance) -> None:
    """Helper thread: wait for the server's loading queue, spawn the instance process, load, build."""
    server = ctl.servers[inst.server]
    with server.load_lock:
        start = ctl.now()
        r = ctl.reqs[inst.for_request] if inst.for_request is not None else None
        if r is not None and math.isnan(r.load_start_s):
            r.load_start_s = start
        try:
            path, download_s = ctl.tiers.prepare(server, inst.model, inst.tier)
            spawn = time.time()
            handle = start_worker(ctl.executor, "schedulers.real.instance:ModelInstance",
                                  {"model": ctl.tiers.model_cfg(inst.model), "dtype": ctl.cfg.dtype,
                                   "device": ctl.cfg.device, "spawn_ts": spawn},
                                  name=f"s{inst.server}-i{inst.iid}-{inst.model}", num_cpus=ctl.cfg.slot_threads,
                                  memory_bytes=ctl.cfg.slot_memory_bytes, resources=server.placement())
            inst.handle = handle
            ctl._handles.append(handle)
            phases = handle.call("load", str(path), ctl.tiers.loader_cfg(server),
                                 timeout_s=ctl.cfg.call_timeout_s)
            phases["download_s"] = download_s
            phases["load_s"] = ctl.now() - start
        except Exception as exc:
            ctl.post(ctl._load_failed, inst, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            return
    ctl.post(ctl._loaded, inst, start, phases)


def serve_job(ctl: Controller, inst: LiveInstance, r: Req) -> None:
    from schedulers.real.instance import prompt_tokens

    stream = Stream(prompt_tokens(r.rid, r.input_tokens, ctl.tiers.vocab_size(r.model)))
    r.serve_start_s = ctl.now()
    holder = {"inst": inst}

    def target() -> Any:
        dst = holder["inst"].migrate_to
        if dst is None or dst.handle is None or dst.state != "idle-migration":
            return None
        holder["src"] = holder["inst"]
        holder["inst"] = dst
        return dst.handle

    def migrated() -> None:
        ctl.post(migration_started, ctl, holder["src"], holder["inst"])

    try:
        serve(lambda: inst.handle, r.rid, stream, r.output_tokens, ctl.cfg.decode_chunk, ctl.cfg.call_timeout_s,
              target, ctl.cfg.migration_stop_tokens, migrated)
        holder["inst"].handle.call("finish", r.rid, timeout_s=ctl.cfg.call_timeout_s)
    except (WorkerError, TimeoutError) as exc:
        ctl.post(ctl._serve_failed, holder["inst"], r, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return
    ctl.post(ctl._served, holder["inst"], r, stream)
