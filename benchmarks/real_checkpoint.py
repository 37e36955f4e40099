"""A real model's manifest, conversions and loads on an opt-1.3b-sized checkpoint in the real layout.

    PYTHONPATH=. python benchmarks/real_checkpoint.py --out DIR [--model opt-1.3b] [--root SCRATCH] [--trials 5]

1. Makes the checkpoint as users get it (once, kept under ``--root``): transformers' ``save_pretrained`` of the
   model (``model.safetensors``, tied head left out, config, generation config, a tokenizer) placed in a Hugging
   Face cache tree (``models--coldstart--<model>/{blobs,refs,snapshots}``, snapshot files linked to blobs), and the
   same weights as a ``.bin``-only directory in transformers 4's layout (``pytorch_model.bin``). The weights are the
   zoo's seeded synthetic values of that architecture, so the zoo checkpoint of the same model holds the same bytes.
2. Measures, in the same run, the page-cache read ceiling of the snapshot's weights (``harness.ceilings``), then
   computes the manifest ``--repeats`` times, each in a fresh process with the files in the page cache: hashing
   GB/s against that ceiling (target ≥ 0.5×) and the process's peak RSS growth over its RSS before the manifest
   (``VmHWM`` reset through ``/proc/self/clear_refs``; target ≤ 0.3 GB).
3. Converts (each in a fresh process, same RSS measure): snapshot → native, ``.bin`` → native, ``.bin`` →
   safetensors, snapshot → torch_bin (``torch.save`` holds one shard in memory: 1 GiB shards, and 256 MiB,
   the store's default).
4. ``coldstart experiment=sllm_loading 'models=[<model>,local]' model_args.local.hf_id=...``: the native loader,
   cold and warm, zoo checkpoint and real one in the same run (target: real within 10 % of zoo).

Writes ``DIR/manifest.csv``, ``DIR/conversions.csv``, ``DIR/loading/`` (the run) and ``DIR/summary.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

MAKE = """
import sys, torch
from pathlib import Path
from harness.config import instantiate_option
from harness.checkpoints import SyntheticValues
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
model, dtype_name, st_dir, bin_dir = sys.argv[1:5]
spec = instantiate_option("model", model)
values = SyntheticValues(0)
state = {t.name: values.tensor(t) for t in spec.tensor_specs(dtype_name)}
hf = spec.meta_model(dtype_name)
hf.load_state_dict(state, strict=False, assign=True)
hf.tie_weights()
hf.save_pretrained(st_dir)
tok = Tokenizer(models.BPE())   # a byte-level BPE trained here (no hub): the directory has tokenizer files
tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
tok.train_from_iterator(["the quickest way to start a large language model is to load it fast"] * 50,
                        trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(st_dir)
Path(bin_dir).mkdir(parents=True, exist_ok=True)
torch.save(state, Path(bin_dir) / "pytorch_model.bin")   # transformers 4's layout: one file, no tied alias
hf.config.to_json_file(str(Path(bin_dir) / "config.json"))
"""

MEASURE = """
import json, os, resource, sys, time
from pathlib import Path
from harness.checkpoints import CheckpointStore
from harness.realmodel import RealModel
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
what, kind, source, store_root, fmt, shard = sys.argv[1:7]
spec = RealModel(hf_id=source, cache_dir=kind) if kind != "path" else RealModel(path=source)
_ = spec.records, spec.own_dtype           # headers read before the measured part
spec.check_tensors()
store = CheckpointStore(store_root, **({"torch_shard_bytes": int(shard)} if int(shard) else {}))
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
base = rss("VmRSS:")
t0 = time.perf_counter()
if what == "manifest":
    ckpt = spec.manifest(store, progress=False)
    timing = ckpt.manifest["timing"]
else:
    ckpt = store.ensure(spec, "auto", fmt, progress=False)
    timing = {}
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "bytes": spec.checkpoint_bytes(), "rss_before": base, "hwm": rss("VmHWM:"),
                  "path": str(ckpt.path), **timing}))
"""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def to_hub_cache(src: Path, hub: Path, hf_id: str, commit: str = "0" * 39 + "1") -> Path:
    """Move ``src``'s files into a Hugging Face cache tree (blobs by sha256, relative snapshot links)."""
    repo = hub / f"models--{hf_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        blob = repo / "blobs" / _sha256(f)
        f.replace(blob)
        (snap / f.name).symlink_to(f"../../blobs/{blob.name}")
    (repo / "refs" / "main").write_text(commit)
    src.rmdir()
    return snap


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLDSTART_CACHE": str(root / "cache")}


def markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A pipe table (pandas' ``to_markdown`` needs tabulate, which is not a dependency)."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]
    rows = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in frame.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def _measure(root: Path, what: str, kind: str, source: str, store: Path, fmt: str = "",
             torch_shard_bytes: int = 0) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", MEASURE, what, kind, source, str(store), fmt, str(torch_shard_bytes)],
                         capture_output=True, text=True, env=_env(root), check=False)
    if out.returncode:
        raise RuntimeError(f"{what} {fmt} failed:\n{out.stderr[-3000:]}")
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    r["rss_growth_gb"] = (r["hwm"] - r["rss_before"]) / 1e9
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="opt-1.3b")
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--root", default="/tmp/coldstart-real-bench", help="scratch (kept: the checkpoint)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--skip-loading", action="store_true")
    args = parser.parse_args()
    out, root = Path(args.out), Path(args.root)
    out.mkdir(parents=True, exist_ok=True)
    hub, bin_dir = root / "hub", root / f"{args.model}-bin"
    hf_id = f"coldstart/{args.model}"
    snap_glob = list((hub / f"models--coldstart--{args.model}" / "snapshots").glob("*"))
    if not snap_glob:
        t0 = time.time()
        staging = root / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(bin_dir, ignore_errors=True)
        subprocess.run([sys.executable, "-c", MAKE, args.model, args.dtype, str(staging), str(bin_dir)],
                       env=_env(root), check=True)
        snap_glob = [to_hub_cache(staging, hub, hf_id)]
        print(f"made the real-layout checkpoint in {time.time() - t0:.0f} s: {snap_glob[0]}", flush=True)
    snap = snap_glob[0]
    weights = sorted(snap.glob("*.safetensors"))
    print("snapshot:", sorted(p.name for p in snap.iterdir()), flush=True)

    from harness.ceilings import pagecache_read

    total = sum(p.stat().st_size for p in weights)
    rows = []
    ceilings = []
    for k in range(args.repeats):
        store = root / f"store-manifest-{k}"
        shutil.rmtree(store, ignore_errors=True)
        ceil = pagecache_read(weights, threads=4, max_bytes=total)  # warms the files, best of 3
        ceilings.append(ceil["gbps"])
        r = _measure(root, "manifest", str(hub), hf_id, store)
        r["hash_gbps"] = r["hash_bytes"] / r["hash_s"] / 1e9
        r["pagecache_read_gbps"] = ceil["gbps"]
        r["fraction_of_ceiling"] = r["hash_gbps"] / ceil["gbps"]
        rows.append({"repeat": k, **{key: r[key] for key in ("bytes", "hash_s", "hash_gbps", "pagecache_read_gbps",
                                                               "fraction_of_ceiling", "rss_growth_gb",
                                                               "hash_threads")}})
        print(f"manifest {k}: {r['hash_gbps']:.2f} GB/s = {r['fraction_of_ceiling']:.2f} × page-cache read "
              f"{ceil['gbps']:.2f} GB/s; peak RSS growth {r['rss_growth_gb']:.3f} GB", flush=True)
        shutil.rmtree(store, ignore_errors=True)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out / "manifest.csv", index=False)

    conv = []
    for label, kind, source, fmt, shard in (
            ("snapshot → native", str(hub), hf_id, "native", 0),
            ("bin → native", "path", str(bin_dir), "native", 0),
            ("bin → safetensors", "path", str(bin_dir), "safetensors", 0),
            ("snapshot → torch_bin (storage.torch_shard_bytes=1 GiB)", str(hub), hf_id, "torch_bin", 1 << 30),
            ("snapshot → torch_bin (256 MiB shards, the store's default)", str(hub), hf_id, "torch_bin", 0)):
        store = root / "store-convert"
        shutil.rmtree(store, ignore_errors=True)
        r = _measure(root, "convert", kind, source, store, fmt, shard)
        conv.append({"conversion": label, "bytes": r["bytes"], "seconds": r["seconds"],
                     "gbps": r["bytes"] / r["seconds"] / 1e9, "rss_growth_gb": r["rss_growth_gb"]})
        print(f"{label}: {r['seconds']:.1f} s (manifest of the source included), peak RSS growth "
              f"{r['rss_growth_gb']:.3f} GB", flush=True)
        shutil.rmtree(store, ignore_errors=True)
    conversions = pd.DataFrame(conv)
    conversions.to_csv(out / "conversions.csv", index=False)

    lines = [f"# Real checkpoint ({args.model} {args.dtype}, real layout) — manifest, conversions, loading", "",
             f"Weights: {total / 1e9:.2f} GB ({', '.join(p.name for p in weights)}) in a Hugging Face cache "
             "snapshot; `.bin` copy in transformers 4's layout.", "", "## Manifest (fresh process each, files in "
             "the page cache)", "", markdown(manifest), "", "## Conversions", "",
             markdown(conversions), ""]
    if not args.skip_loading:
        results = root / "results"
        shutil.rmtree(results, ignore_errors=True)
        cmd = [sys.executable, "-m", "harness", "experiment=sllm_loading", f"models=[{args.model},local]",
               f"model_args.local.hf_id={hf_id}", f"model_args.local.cache_dir={hub}",
               f"model_args.local.name={args.model}-real", f"dtype={args.dtype}",
               "loaders=[native]", "cache_states=[cold,warm]", f"trials={args.trials}", "progress=false"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, env={**_env(root), "COLDSTART_RESULTS": str(results)}, check=True, cwd=REPO)
        run = sorted(results.glob("runs/sllm_loading/*"))[-1]
        shutil.rmtree(out / "loading", ignore_errors=True)
        shutil.copytree(run, out / "loading")
        s = pd.read_csv(run / "summary.csv", keep_default_na=False)
        s["which"] = s["model_source"].map({"zoo": "zoo", "hf_cache": "real"})
        table = s.pivot_table(index="cache_state", columns="which", values="load_s_median", aggfunc="first")
        table["real / zoo"] = table["real"] / table["zoo"]
        table.to_csv(out / "loading_ratio.csv")
        lines += ["## Native loader, zoo vs real checkpoint, same run (median load_s of "
                  f"{args.trials} trials)", "", markdown(table, index=True), ""]
        print(table.round(4).to_string(), flush=True)
    (out / "summary.md").write_text("\n".join(lines))
    print(f"wrote {out}/summary.md", flush=True)


if __name__ == "__main__":
    main()
