"""Remote tier on loopback nginx: native load from a URL vs a plain parallel range download of the same bytes.

    PYTHONPATH=. python benchmarks/remote_loading.py --model opt-1.3b --dtype fp16 --threads 4 --repeats 3

Serves the checkpoint store's root with nginx on 127.0.0.1, then per repeat: the ``remote_download`` ceiling
(parallel 16 MiB range GETs to nowhere), the same download written to files (what fetching before loading
costs: the baseline for a loader that must keep a local copy), a native CPU load of the URL (range reads written
through to a fresh SSD-tier directory), and a second load of the same URL, which must be served from the SSD
tier. Issue 3 asks for native ≥ 0.7 × the download. Before each timed step ``os.sync()`` writes back what earlier
steps left dirty (2.6 GB of it otherwise throttles the next writer). The SSD directory is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.nginx_serve import serve
from harness.checkpoints import CheckpointStore, verify_state_dict
from harness.config import instantiate_option
from loaders.native.loader import NativeLoader
from loaders.native.remote import remote_download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="opt-1.3b")
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--format", default="native")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--root", default=str(Path.home() / ".cache/coldstart/checkpoints"))
    args = parser.parse_args()
    spec = instantiate_option("model", args.model)
    ckpt = CheckpointStore(args.root).ensure(spec, args.dtype, args.format)
    ssd = Path(tempfile.mkdtemp(prefix="coldstart-remote-ssd-"))
    ratios: list[float] = []
    disk_ratios: list[float] = []
    try:
        with serve(Path(args.root), args.port, workers=4) as base:
            url = f"{base}/{ckpt.path.name}"
            for i in range(args.repeats):
                names = [f.name for f in ckpt.files]
                os.sync()  # each timed step starts with no dirty pages of an earlier one to write back
                ceiling = remote_download(url, names, args.threads)
                to_disk = ssd / "download-to-disk"
                to_disk.mkdir(exist_ok=True)
                fetched = remote_download(url, names, args.threads, to_dir=to_disk)
                shutil.rmtree(to_disk)
                loader = NativeLoader(threads=args.threads, dram_dir=None, ssd_dir=str(ssd))
                loader.drop_remote_copies(url)
                os.sync()
                t0 = time.perf_counter()
                first = loader.load(url, torch.device("cpu"))
                t_remote = time.perf_counter() - t0
                assert verify_state_dict(ckpt, first.state_dict) == ckpt.total_bytes
                first_phases = first.phases_s
                del first
                t0 = time.perf_counter()
                second = loader.load(url, torch.device("cpu"))
                t_ssd = time.perf_counter() - t0
                gbps = ckpt.total_bytes / t_remote / 1e9
                ratio = gbps / ceiling["gbps"]
                ratios.append(ratio)
                disk_ratios.append(gbps / fetched["gbps"])
                print(f"[{i}] {args.model} {args.dtype} {args.format} {ckpt.total_bytes / 1e9:.2f} GB: download "
                      f"ceiling {ceiling['gbps']:.2f} GB/s ({ceiling['s']:.2f} s); native remote load {t_remote:.2f} s "
                      f"= {gbps:.2f} GB/s = {ratio:.2f} × ceiling, {gbps / fetched['gbps']:.2f} × a download to "
                      f"disk ({fetched['gbps']:.2f} GB/s); written through to SSD; next load "
                      f"from {sorted(second.bytes_by_tier)} in {t_ssd:.2f} s; phases "
                      f"{ {k: round(v, 2) for k, v in first_phases.items() if k.endswith('_s')} }", flush=True)
                del second
                loader.drop_remote_copies(url)
    finally:
        shutil.rmtree(ssd, ignore_errors=True)
    print(f"median ratio native/download: {statistics.median(ratios):.2f} (target ≥ 0.7); native/download to disk: "
          f"{statistics.median(disk_ratios):.2f}")


if __name__ == "__main__":
    main()
