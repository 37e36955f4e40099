#!/usr/bin/env bash
# The runtime tier's targets on this machine's CPU, each side by side with fresh in the same run:
#   1. experiment=loading, opt-125m, warm, the default loaders, runtimes=[fresh,forkserver,pool], 5 trials
#      (target: spawn -> first token with forkserver and with pool <= 0.15 x fresh)
#   2. experiment=loading, opt-1.3b, cold, native, runtimes=[fresh,pool], 5 trials
#      (target: with pool, the weights phase is at least half of spawn -> first token)
#   3. experiment=serverless_real at its reference workload, runtimes=[fresh,pool]
#      (target: median TTFT with pool <= 0.3 x with fresh)
#   4. experiment=sim_vs_real (the reference scenario: 240 s at 0.1 req/s), runtimes=[pool]
#      (target: median TTFT and cold-start count errors <= 10 % for serverlessllm, serverless, shepherd)
# Usage: OUT=results/reference/runtime_cpu bash benchmarks/runtime_cpu.sh [steps, default "1 2 3 4"]
# (about 30 min on a 2-core VM; run nothing else meanwhile). Each step's run directory is $OUT/<step>/;
# benchmarks/runtime_summary.py prints the targets from them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/runs/runtime_cpu/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
STEPS=${*:-1 2 3 4}
FAILED=0
TAG=runtime_cpu SHOWN=12 EXTRA=()
source benchmarks/steps.sh
for s in $STEPS; do
  case $s in
    1) run loading_opt-125m_warm experiment=loading model=opt-125m cache_states=[warm] trials=5 \
         'runtimes=[fresh,forkserver,pool]' ;;
    2) run loading_opt-1.3b_cold experiment=loading model=opt-1.3b loaders=[native] cache_states=[cold] trials=5 \
         'runtimes=[fresh,pool]' ;;
    3) run serverless_real experiment=serverless_real 'runtimes=[fresh,pool]' ;;
    4) run sim_vs_real_pool experiment=sim_vs_real runtime=pool workload.duration_s=240 workload.rps=0.1 ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
"$PY" benchmarks/runtime_summary.py "$OUT" || FAILED=1
exit $FAILED
