#!/usr/bin/env bash
# The runtime tier on a GPU in one short command: fresh vs pool cold starts on CUDA, same run, side by side.
#   1. the runtime tests marked gpu; forkserver with device=cuda exits 2 with one clear line
#   (every trial below checks every tensor against the manifest, and the first tokens of fresh and pool must agree)
#   2. experiment=loading, opt-125m, native, warm, runtimes=[fresh,pool], 5 trials: device init saved by the pool
#   3. experiment=loading, opt-6.7b, native, cold+warm, runtimes=[fresh,pool], 3 trials: the weights' share
# Outputs (flat, at most 8 files): $OUT/{environment.txt,gpu_tests.txt,<model>_summary.csv,<model>_trials.parquet,
#   runtimes.json,log.txt}.
# Here:        ../shared/tools/device-wheels.sh             (the wheels the device image lacks, into .whl/)
# On the GPU:  OUT=/some/dir bash benchmarks/gpu_runtime.sh
# Dry run:     GPU_RUNTIME_DRYRUN=1 OUT=/tmp/r bash benchmarks/gpu_runtime.sh   (device=cpu, tiny models, ~1 min)
set -uo pipefail
case ${OUT:-} in ""|/*) ;; *) OUT=$PWD/$OUT ;; esac
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-results/runs/gpu_runtime/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT" || exit 2
RUNS=$(mktemp -d /tmp/coldstart-gpu-runtime-XXXXXX)
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ "${GPU_RUNTIME_DRYRUN:-0}" = 1 ]; then
  DEVICE=cpu; SMALL=tiny-opt; BIG=tiny-llama; SMALL_TRIALS=2; BIG_TRIALS=1; COLD=cold_method=auto
else
  DEVICE=cuda; SMALL=${GPU_RUNTIME_SMALL:-opt-125m}; BIG=${GPU_RUNTIME_BIG:-opt-6.7b}; SMALL_TRIALS=5; BIG_TRIALS=3
  COLD=cold_method=fadvise   # distinct copies of a 13 GB checkpoint per cold trial would not fit the disk
fi
FAILED=0
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl || exit 2
  export PYTHONPATH=$ROOT:$ROOT/.site
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
export COLDSTART_RESULTS=$RUNS
{
  echo "date: $(date -Is)"; echo "git: $(git rev-parse HEAD 2>/dev/null)"; echo "nproc: $(nproc)"
  grep -m1 "model name" /proc/cpuinfo; free -g | head -2
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
} >"$OUT/environment.txt" 2>&1
echo "[gpu_runtime] $(date +%T) gpu tests"
if [ "$DEVICE" = cuda ]; then
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/runtimes >"$OUT/gpu_tests.txt" 2>&1 || FAILED=1
  tail -3 "$OUT/gpu_tests.txt"
fi
loading() {  # model trials states
  echo "[gpu_runtime] $(date +%T) loading $1: $2 trials, $3, runtimes fresh and pool"
  "$PY" -m harness experiment=loading device="$DEVICE" model="$1" dtype=fp16 loaders=[native] cache_states="$3" \
    'runtimes=[fresh,pool]' trials="$2" progress=false "$COLD" trial_timeout_s=300 hydra.run.dir="$RUNS/$1" || FAILED=1
  cp "$RUNS/$1/summary.csv" "$OUT/$1_summary.csv" 2>/dev/null
  cp "$RUNS/$1/trials.parquet" "$OUT/$1_trials.parquet" 2>/dev/null
}
if [ "$DEVICE" = cuda ]; then  # forkserver must refuse CUDA with one clear line (exit 2), before any work
  "$PY" -m harness experiment=loading device=cuda model="$SMALL" loaders=[native] 'runtimes=[forkserver]' trials=1 \
    progress=false hydra.run.dir="$RUNS/refuse" >"$RUNS/refuse.log" 2>&1
  rc=$?; echo "[gpu_runtime] forkserver with device=cuda: exit $rc: $(grep -m1 -i "fork" "$RUNS/refuse.log")"
  [ $rc = 2 ] || FAILED=1
fi
loading "$SMALL" "$SMALL_TRIALS" "[warm]"
loading "$BIG" "$BIG_TRIALS" "[cold,warm]"
"$PY" - "$RUNS" "$OUT" "$SMALL" "$BIG" <<'PYEOF' || FAILED=1
import json, sys
from pathlib import Path
import pandas as pd
runs, out, models = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
doc = {}
for m in models:
    env = runs / m / "environment.json"
    if env.exists():
        doc[m] = json.loads(env.read_text()).get("runtimes", {})
    trials = runs / m / "trials.parquet"
    if not trials.exists():
        continue
    t = pd.read_parquet(trials)
    t = t[t["ok"].astype(bool)]
    cols = ["t_handoff_s", "t_imports_s", "t_device_init_s", "t_weights_s", "t_model_build_s", "t_first_token_s",
            "cold_start_s"]
    med = t.groupby(["cache_state", "runtime"])[cols].median()
    med["weights_share"] = med["t_weights_s"] / med["cold_start_s"]
    tokens = t.groupby("runtime")["first_token_id"].unique()
    same = t["first_token_id"].nunique() == 1
    print(f"\n{m}: first token per runtime {dict(tokens.map(list))}: {'equal' if same else 'DIFFERENT'}; "
          f"verified bytes per trial {sorted(set(t['verified_bytes'].astype(int)))}")
    if not same:
        sys.exit(1)
    print(f"{m}: medians (s) per cache state and runtime")
    print(med.round(4).to_string())
    for state, g in med.groupby(level=0):
        if {"fresh", "pool"} <= set(g.index.get_level_values(1)):
            f, p = g.loc[(state, "fresh")], g.loc[(state, "pool")]
            print(f"{m} {state}: pool/fresh cold start = {p.cold_start_s / f.cold_start_s:.3f}; device init fresh "
                  f"{f.t_device_init_s:.3f} s, pool {p.t_device_init_s:.4f} s; weights share fresh "
                  f"{f.weights_share:.3f}, pool {p.weights_share:.3f}")
(out / "runtimes.json").write_text(json.dumps(doc, indent=1, default=str))
PYEOF
rm -rf "$RUNS"
echo "[gpu_runtime] $(date +%T) done; $([ $FAILED = 0 ] && echo "every step passed" || echo "NOT every step passed")"
exit $FAILED
