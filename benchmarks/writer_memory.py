"""Peak memory of the checkpoint writer on a large model: streaming keeps RSS far below the checkpoint size.

    PYTHONPATH=. python benchmarks/writer_memory.py --model opt-2.7b --dtype fp16 --formats safetensors,torch_bin

Each format is written in a fresh process (so peaks do not mix) into a temporary store that is deleted after.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from hydra.utils import instantiate
from omegaconf import OmegaConf
from harness.checkpoints import CheckpointStore
from harness.paths import repo_root
from harness.config import instantiate_option
model, dtype, fmt, root = sys.argv[1:5]
spec = instantiate_option("model", model)
spec.tensor_specs(dtype)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
ckpt = CheckpointStore(root).write(spec, dtype, fmt, 0, __import__("pathlib").Path(root) / "ckpt", progress=False)
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"bytes": ckpt.total_bytes, "files": len(ckpt.files), "baseline_rss": base, "peak_rss": peak,
                  "seconds": elapsed}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="opt-2.7b")
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--formats", default="safetensors,torch_bin")
    parser.add_argument("--root", default=None, help="scratch directory (default: a temp dir on the cache disk)")
    args = parser.parse_args()
    for fmt in args.formats.split(","):
        root = Path(tempfile.mkdtemp(prefix="coldstart-writer-", dir=args.root))
        try:
            t0 = time.time()
            out = subprocess.run([sys.executable, "-c", CHILD, args.model, args.dtype, fmt, str(root)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            growth = r["peak_rss"] - r["baseline_rss"]
            print(f"{args.model} {args.dtype} {fmt}: {r['bytes'] / 1e9:.2f} GB in {r['files']} files, "
                  f"{r['seconds']:.1f} s ({r['bytes'] / r['seconds'] / 1e9:.2f} GB/s); peak RSS "
                  f"{r['peak_rss'] / 1e9:.2f} GB (baseline {r['baseline_rss'] / 1e9:.2f} GB, growth "
                  f"{growth / 1e9:.2f} GB = {growth / r['bytes']:.1%} of the checkpoint); "
                  f"wall {time.time() - t0:.0f} s")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB peak)")


if __name__ == "__main__":
    main()
