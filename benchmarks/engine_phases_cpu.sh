#!/usr/bin/env bash
# The engine tier's CPU targets (issue 29), each side by side in the same run:
#   1. experiment=loading, opt-125m, warm, safetensors, runtimes=[fresh], engines=[eager,compiled],
#      compile_caches=[cold,warm], 3 trials (target: t_compile_s warm <= 0.3 x cold; first tokens equal to eager;
#      tpot_s compiled vs eager reported)
#   2. experiment=loading, opt-125m, cold, native, runtimes=[pool] with prepared engines,
#      engines=[compiled], 3 trials (target: spawn -> first token <= 1.5 x the weights phase)
#   3. the same with opt-1.3b
#   4. step 1's compiled cells with engine.precompile=false: Dynamo traces at first use, the compile cache restores
#      Inductor's artifacts and kernels only (what the precompiled forwards add)
#   5, 6. steps 2 and 3 in bf16: on a CPU that computes fp16 without native instructions (AMD Zen 4: no
#      AVX512-FP16/AMX) the fp16 prefill alone outweighs the weights; bf16 is what such a CPU serves
# Usage: OUT=results/reference/engine_phases_cpu bash benchmarks/engine_phases_cpu.sh [steps, default "1 2"]
# Run it alone (under flock -x /tmp/coldstart-heavy.lock on a shared machine). Each step's run directory is
# $OUT/<step>/; benchmarks/engine_phases_summary.py prints the targets from them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/runs/engine_phases_cpu/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
STEPS=${*:-1 2}
FAILED=0
{ lscpu | head -20; free -g; "$PY" -c "import torch; print('torch', torch.__version__)"; } >"$OUT/hardware.txt"
TAG=engine_phases_cpu SHOWN=8 EXTRA=()
source benchmarks/steps.sh
for s in $STEPS; do
  case $s in
    1) run compile_cache_opt-125m experiment=loading model=opt-125m loaders=[safetensors] cache_states=[warm] \
         trials=3 'engines=[eager,compiled]' 'compile_caches=[cold,warm]' ;;
    2) run pool_prepared_opt-125m experiment=loading model=opt-125m loaders=[native] cache_states=[cold] \
         trials=3 engines=[compiled] runtimes=[pool] runtime_args.pool.prepare_engines=true \
         runtime_args.pool.start_timeout_s=1200 runtime_args.pool.recycle=never ;;
    3) run pool_prepared_opt-1.3b experiment=loading model=opt-1.3b loaders=[native] cache_states=[cold] \
         trials=3 engines=[compiled] runtimes=[pool] runtime_args.pool.prepare_engines=true \
         runtime_args.pool.start_timeout_s=1200 runtime_args.pool.recycle=never ;;
    4) run compile_cache_opt-125m_precompile_off experiment=loading model=opt-125m loaders=[safetensors] \
         cache_states=[warm] trials=3 'engines=[compiled]' 'compile_caches=[cold,warm]' \
         engine_args.compiled.precompile=false ;;
    5) run pool_prepared_opt-125m_bf16 experiment=loading model=opt-125m dtype=bf16 loaders=[native] \
         cache_states=[cold] trials=3 engines=[compiled] runtimes=[pool] runtime_args.pool.prepare_engines=true \
         runtime_args.pool.start_timeout_s=1200 runtime_args.pool.recycle=never ;;
    6) run pool_prepared_opt-1.3b_bf16 experiment=loading model=opt-1.3b dtype=bf16 loaders=[native] \
         cache_states=[cold] trials=3 engines=[compiled] runtimes=[pool] runtime_args.pool.prepare_engines=true \
         runtime_args.pool.start_timeout_s=1200 runtime_args.pool.recycle=never ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
"$PY" benchmarks/engine_phases_summary.py "$OUT" || FAILED=1
exit $FAILED
