"""Cold loads in one process, interleaved, the page cache evicted before each: native (O_DIRECT, buffered) vs
safetensors, without the fresh-process noise of the loading experiment.

    PYTHONPATH=. python benchmarks/cold_inprocess.py --model opt-1.3b --dtype fp16 --repeats 3

Generates (or reuses) the checkpoints in the store under ``--root``; every load ends with each tensor's pages
touched. Prints one line per load and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import safetensors.torch as st
import torch

from harness.checkpoints import CheckpointStore
from harness.config import instantiate_option
from loaders.native.loader import NativeLoader
from loaders.pagecache import evict

CPU = torch.device("cpu")


def _touch(sd: dict[str, torch.Tensor]) -> None:
    for t in sd.values():
        if t.numel():
            t.reshape(-1).view(torch.uint8)[::4096].sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="opt-1.3b")
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", default=str(Path.home() / ".cache/coldstart/checkpoints"))
    args = parser.parse_args()
    spec = instantiate_option("model", args.model)
    store = CheckpointStore(args.root)
    nat = store.ensure(spec, args.dtype, "native")
    sft = store.ensure(spec, args.dtype, "safetensors")
    cells: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
        "native O_DIRECT": lambda: NativeLoader(dram_dir=None, direct_io="on").load(nat.path, CPU).state_dict,
        "native buffered": lambda: NativeLoader(dram_dir=None, direct_io="off", staging="direct")
        .load(nat.path, CPU).state_dict,
        "native mapped": lambda: NativeLoader(dram_dir=None, direct_io="off", staging="map")
        .load(nat.path, CPU).state_dict,
        "safetensors": lambda: {k: v for f in sft.files if f.suffix == ".safetensors"
                                for k, v in st.load_file(f).items()},
    }
    times: dict[str, list[float]] = {name: [] for name in cells}
    for rep in range(args.repeats):
        for name, load in cells.items():
            resident = evict([*nat.files, *sft.files])
            t0 = time.perf_counter()
            sd = load()
            _touch(sd)
            times[name].append(time.perf_counter() - t0)
            del sd
            print(f"[{rep}] {name}: {times[name][-1]:.2f} s (resident before: {resident:.3f})", flush=True)
    size = nat.total_bytes
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"median {name}: {med:.2f} s = {size / med / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
