#!/usr/bin/env bash
# Cold and hot loads at the hardware's limit on this machine's CPU (issue 30), every target from runs of its own:
#   1. experiment=loading, opt-1.3b fp16, cold, runtimes=[fresh,pool], 5 trials, the native loader with default
#      settings (auto: the path its probe measured fastest) beside native_direct (direct_io=on)
#      (targets: default fresh >= 0.85 x the disk ceiling; pool, reading into its worker's arena, >= 0.9;
#       direct_io=on >= 0.8 — each against the disk's own limit, disk_read, and shown against disk_read_fresh too)
#   2. make demo's defaults: experiment=loading, opt-125m fp16, the five default loaders, cold/warm/hot, fresh, 5 trials
#      (targets: native cold no slower than the fastest baseline's cold; native hot <= native warm)
#   3. benchmarks/remote_loading.py --arena: opt-1.3b from nginx on loopback into a pool worker's arena
#      (target: median over 5 repeats >= 0.8 x the same repeat's download to nowhere)
# Usage: OUT=results/reference/cold_path_cpu bash benchmarks/cold_path_cpu.sh [steps, default "1 2 3"]
# (about 10 min on a 2-core VM once the checkpoints exist; run nothing else meanwhile: wrap it in
# `flock -x /tmp/coldstart-heavy.lock` on a shared machine). Each step writes $OUT/<step>/ (and a log); benchmarks/cold_path_summary.py prints the targets.
# DRAM_DIR sets the native loader's DRAM tier (default /dev/shm/coldstart-dram).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/runs/cold_path_cpu/$(date +%Y-%m-%d_%H-%M-%S)}
DRAM_DIR=${DRAM_DIR:-/dev/shm/coldstart-dram}
CACHE=${COLDSTART_CACHE:-$HOME/.cache/coldstart}
mkdir -p "$OUT"
STEPS=${*:-1 2 3}
FAILED=0
TAG=cold_path_cpu SHOWN=14 EXTRA=(loader_args.native.dram_dir="$DRAM_DIR")
source benchmarks/steps.sh
for s in $STEPS; do
  case $s in
    1) run opt-1.3b_cold experiment=loading model=opt-1.3b 'loaders=[native,native_direct]' \
         'loader_variants={native_direct:{base:native,overrides:{direct_io:"on"}}}' \
         'runtimes=[fresh,pool]' 'cache_states=[cold]' trials=5 ;;
    2) run demo experiment=loading device=cpu trials=5 ;;
    3) echo "[cold_path_cpu] $(date +%T) remote: benchmarks/remote_loading.py --arena"
       PYTHONPATH=. "$PY" benchmarks/remote_loading.py --model opt-1.3b --repeats 5 --arena \
         --root "$CACHE/checkpoints" --json "$OUT/remote.json" >"$OUT/remote.log" 2>&1 || FAILED=1
       tail -n 4 "$OUT/remote.log" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
"$PY" benchmarks/cold_path_summary.py "$OUT" | tee "$OUT/summary.md" || FAILED=1
exit $FAILED
