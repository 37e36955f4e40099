#!/usr/bin/env bash
# Every GPU path checked and measured in one command of at most GPU_QUICK_BUDGET_S (480 s) on a GPU box:
#   the `gpu` tests, then sllm_loading on CUDA for opt-1.3b and llama-2-7b (native, safetensors, torch and the peers
#   that install; cold/warm/hot; 3 trials) with the same run's ceilings (pinned and pageable H2D), then the ablation
#   on opt-1.3b; everything under $OUT/<gpu>/ in the layout of results/reference/<gpu>/, with steps.csv and
#   summary.md (the README's ratios). Each step after the first loading run is sized from what that run measured;
#   a step that would not fit is shrunk or skipped, one that overruns is killed, and the partial results stay.
# Here:        ../shared/tools/device-wheels.sh       (the wheels the device image lacks, into .whl/)
# On the GPU:  OUT=/some/dir bash benchmarks/gpu_quick.sh        (exit 0 only when every step passed)
# Dry run:     GPU_QUICK_DRYRUN=1 OUT=/tmp/q bash benchmarks/gpu_quick.sh   (cpu, tiny models, same steps, trials
#              forked from a zygote: GPU_QUICK_DRYRUN_RUNTIMES=[fresh] for fresh interpreters; ~1 min)
# Knobs: GPU_QUICK_BUDGET_S, GPU_QUICK_RESERVE_S (kept for the summary), GPU_QUICK_MODELS ("small big"),
#   GPU_QUICK_LOADERS, GPU_QUICK_TRIALS, PYTHON (default python3, or the interpreter the wheels go to).
set -uo pipefail
case ${OUT:-} in ""|/*) ;; *) OUT=$PWD/$OUT ;; esac   # a relative OUT is the caller's, not the repository's
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s.%N)
DRY=${GPU_QUICK_DRYRUN:-0}
BUDGET=${GPU_QUICK_BUDGET_S:-480}
PY=${PYTHON:-python3}
HELPER="benchmarks/gpu_quick_summary.py"
DTYPE=fp16
ALL_STATES="[cold,warm,hot]"
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; MACHINE=dryrun-cpu
  read -r SMALL BIG <<<"${GPU_QUICK_MODELS:-tiny-opt tiny-llama}"
  LOADERS=${GPU_QUICK_LOADERS:-[native,safetensors,torch]}
  TRIALS=${GPU_QUICK_TRIALS:-1}; RESERVE=${GPU_QUICK_RESERVE_S:-10}; TRIAL_TIMEOUT=60
  # the fadvise fallback (distinct copies) is harmless at this size; a small ceiling sample keeps it quick; a dry
  # run measures nothing, so its trials fork from a zygote instead of starting an interpreter each (GPU runs: fresh)
  RUN_ARGS=(cold_method=auto ceiling_max_bytes=1048576 "runtimes=${GPU_QUICK_DRYRUN_RUNTIMES:-[forkserver]}")
  ABLATION_SMOKE=--smoke ABLATION_STATES=${GPU_QUICK_ABLATION_STATES:-[cold,hot]}   # the two ends, to stay quick
else
  DEVICE=cuda
  MACHINE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9.-')
  MACHINE=${MACHINE:-unknown-gpu}
  read -r SMALL BIG <<<"${GPU_QUICK_MODELS:-opt-1.3b llama-2-7b}"
  LOADERS=${GPU_QUICK_LOADERS:-[native,safetensors,torch,runai,fastsafetensors,tensorizer]}
  TRIALS=${GPU_QUICK_TRIALS:-3}; RESERVE=${GPU_QUICK_RESERVE_S:-20}; TRIAL_TIMEOUT=120
  # fadvise, never copies: distinct copies of a 13 GB checkpoint per cold trial would not fit a 64 GB disk; the
  # resident fraction each cold row reports says how cold it was
  RUN_ARGS=(cold_method=fadvise); ABLATION_SMOKE= ABLATION_STATES=${GPU_QUICK_ABLATION_STATES:-}
fi
OUT=${OUT:-results/runs/gpu_quick/$(date +%Y-%m-%d_%H-%M-%S)}
M=$OUT/$MACHINE
mkdir -p "$M/logs" || exit 2
M=$(cd "$M" && pwd)
: >"$M/steps.csv.tmp"
export COLDSTART_RESULTS=${COLDSTART_RESULTS:-$M/runs}   # nothing lands there: every run names its own dir
CACHE=${COLDSTART_CACHE:-$HOME/.cache/coldstart}
STOPPED=0        # 1 once a step overran the budget (or a GPU run found no CUDA): later steps are skipped
WHY="budget spent"
FAILED=0
SMALL_OK=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
left() { awk -v t0="$T0" -v b="$BUDGET" -v r="$RESERVE" -v n="$(now)" 'BEGIN { printf "%d", b - r - (n - t0) }'; }
say() { echo "[gpu_quick $(since "$T0")s] $*"; }
record() {  # step status seconds note
  local note=${4//\"/\'}
  echo "$1,$2,$3,\"$note\"" >>"$M/steps.csv.tmp"
  { echo "step,status,seconds,note"; cat "$M/steps.csv.tmp"; } >"$M/steps.csv"
  [ "$2" = ok ] || FAILED=1
}
children() {  # pgrep where procps is installed, else the parent field of /proc/<pid>/stat
  if command -v pgrep >/dev/null; then pgrep -P "$1"; else awk -v p="$1" '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null; fi
}
descendants() { local c; for c in $(children "$1"); do echo "$c"; descendants "$c"; done; }
# run "$@" for at most $1 seconds; on overrun stop it, then kill it and every process it started (trial
# processes run in sessions of their own, so a process-group kill would miss them); 124 as timeout(1) does
deadline() {
  local secs=$1; shift
  "$@" & local pid=$!
  local end; end=$(awk -v n="$(now)" -v s="$secs" 'BEGIN { printf "%.1f", n + s }')
  while kill -0 "$pid" 2>/dev/null; do
    if awk -v n="$(now)" -v e="$end" 'BEGIN { exit !(n > e) }'; then
      kill -STOP "$pid" 2>/dev/null
      # shellcheck disable=SC2046
      kill -KILL "$pid" $(descendants "$pid") 2>/dev/null
      wait "$pid" 2>/dev/null
      return 124
    fi
    sleep 0.5
  done
  wait "$pid"
}
# step NAME NOTE CMD...: run CMD under the budget left, log to logs/NAME.log, record status and seconds
step() {
  local name=$1 note=$2; shift 2
  if [ "$STOPPED" = 1 ]; then record "$name" skipped 0 "$WHY"; say "$name: skipped ($WHY)"; return 1; fi
  local budget; budget=$(left)
  if [ "$budget" -lt 5 ]; then
    STOPPED=1; record "$name" skipped 0 "budget spent before this step"; say "$name: skipped (budget)"; return 1
  fi
  say "$name: start (${budget}s left) $note"
  local t; t=$(now)
  deadline "$budget" "$@" >"$M/logs/$name.log" 2>&1
  local rc=$? secs; secs=$(since "$t")
  if [ $rc = 0 ]; then
    record "$name" ok "$secs" "$note"; say "$name: ok in ${secs}s"
  elif [ $rc = 124 ]; then
    STOPPED=1; record "$name" timeout "$secs" "killed at the budget${note:+; $note}"
    say "$name: TIMEOUT after ${secs}s: stopping (partial results kept)"
  else
    record "$name" failed "$secs" "exit $rc${note:+; $note}"; say "$name: FAILED (exit $rc) after ${secs}s; log tail:"
    tail -n 15 "$M/logs/$name.log" | sed 's/^/    /'
  fi
  return $rc
}
harness() { "$PY" -m harness "$@"; }

# 1. the wheels the device image lacks (the same line as every device run; nothing to do without .whl/)
install_wheels() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl &&
    ls .whl >"$M/installed-wheels.txt"
}
if ls .whl/*.whl >/dev/null 2>&1; then
  step install "$(ls .whl/*.whl | wc -l) wheels from .whl/ into .site/" install_wheels
  export PYTHONPATH=$ROOT:$ROOT/.site
else
  record install ok 0 "no .whl/: nothing installed, using $PY as is"; say "install: no .whl/, using $PY as is"
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi

# 2. what it ran on: nvidia-smi, versions, CPU, memory, disks; on a GPU run, no CUDA is the end of it
environment() {
  if command -v nvidia-smi >/dev/null; then { nvidia-smi; nvidia-smi -q; } >"$M/nvidia-smi.txt" 2>&1
  else echo "no nvidia-smi on this machine" >"$M/nvidia-smi.txt"; fi
  {
    echo "date: $(date -Is)"; echo "git: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed"
    echo "uname: $(uname -a)"; echo "nproc: $(nproc)"; grep -m1 "model name" /proc/cpuinfo
    free -b | sed 's/^/free: /'; df -B1 "$CACHE" /dev/shm 2>/dev/null | sed 's/^/df: /'
    echo "PYTHON=$PY PYTHONPATH=$PYTHONPATH COLDSTART_CACHE=$CACHE dryrun=$DRY"
    "$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python:", platform.python_version())
for name in ("torch", "transformers", "safetensors", "numpy", "pandas", "hydra-core", "omegaconf", "xxhash",
             "runai-model-streamer", "fastsafetensors", "tensorizer", "pytest"):
    try:
        print(f"{name}: {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
print("cuda:", torch.version.cuda, "available:", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"gpu {i}: {p.name} {p.total_memory / 2**30:.1f} GiB")
EOF
  } >"$M/environment.txt" 2>&1
  [ "$DEVICE" = cpu ] || "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible")'
}
step environment "" environment || [ "$DEVICE" = cpu ] || { STOPPED=1; WHY="no CUDA device visible"; }

# 3. the tests marked gpu (skipped on a dry run, which has no CUDA)
gpu_tests() {
  mkdir -p "$M/gpu_tests"
  # shellcheck disable=SC2046
  "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml="$M/gpu_tests/junit.xml" \
    $(grep -rl "pytest.mark.gpu" tests --include='*.py') 2>&1 | tee "$M/gpu_tests/pytest.log"
}
step gpu_tests "" gpu_tests

# facts the plans need, read from the composed configs (`--cfg job` composes, runs nothing)
facts() {  # prefix model experiment → PREFIX_BYTES, PREFIX_DRAM_CAP, PREFIX_DRAM_DIR, PREFIX_ABLATION_STEPS
  local f="$M/logs/cfg_$1.yaml"
  harness experiment="$3" model="$2" loader=native dtype="$DTYPE" --cfg job >"$f" 2>&1 &&
    "$PY" "$HELPER" facts "$f" | sed "s/^/$1_/"
}
free_bytes() { local d=$1; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -B1 --output=avail "$d" | tail -1; }
plan_hot() {  # prefix → PREFIX_STATES, PREFIX_EXTRA, PREFIX_NOTE: hot only where the DRAM tier can hold it
  local b=$1_BYTES c=$1_DRAM_CAP d=$1_DRAM_DIR
  "$PY" "$HELPER" plan-hot --states "$ALL_STATES" --bytes "${!b:-0}" --dram-cap "${!c:-0}" \
    --tmpfs-free "$(free_bytes "${!d:-/dev/shm}")" | sed "s/^/$1_/"
}
loading() {  # model trials loaders states [extra overrides...]
  local model=$1 trials=$2 loaders=$3 states=$4; shift 4
  harness experiment=sllm_loading device="$DEVICE" progress=false dtype="$DTYPE" models="[$model]" \
    loaders="$loaders" cache_states="$states" trials="$trials" trial_timeout_s="$TRIAL_TIMEOUT" \
    hydra.run.dir="$M/sllm_loading/$model" "${RUN_ARGS[@]}" "$@"
}

# 4. the small model: every loader, every state, full trials; it is also what sizes the later steps
eval "$(facts SMALL "$SMALL" sllm_loading)"
eval "$(plan_hot SMALL)"
SMALL_STARTED=$(now)
step "loading_$SMALL" "$TRIALS trials $LOADERS $SMALL_STATES${SMALL_NOTE:+; $SMALL_NOTE}" \
  loading "$SMALL" "$TRIALS" "$LOADERS" "$SMALL_STATES" ${SMALL_EXTRA:+"$SMALL_EXTRA"} && SMALL_OK=1
SMALL_S=$(since "$SMALL_STARTED")

# 5. the same run's ceilings: disk, page cache, memcpy, and on CUDA pinned and pageable host->device
if [ $SMALL_OK = 1 ]; then
  step ceilings "" "$PY" "$HELPER" ceilings "$M" $([ "$DEVICE" = cuda ] && echo --cuda)
else
  record ceilings skipped 0 "no finished loading run"
fi

# what the ablation will need (step 7), so that step 6 leaves time for its smallest form
ABLATION_STATES=${ABLATION_STATES:-$SMALL_STATES}
n_states=$(tr -cd , <<<"$ABLATION_STATES" | wc -c); n_states=$((n_states + 1))
[ $SMALL_OK = 1 ] && eval "$(facts ABL "$SMALL" sllm_ablation)"

# 6. the 6-8 B model: trials and loaders sized from the small run's measured costs, the disk and the DRAM tier
if [ $SMALL_OK = 1 ] && [ "$STOPPED" = 0 ]; then
  eval "$(facts BIG "$BIG" sllm_loading)"
  # keeps time for the smallest ablation (2 variants, 1 trial per state) after it
  eval "$("$PY" "$HELPER" plan-big --reserve-trials $((2 * n_states)) --small-run "$M/sllm_loading/$SMALL" \
    --small-step-s "$SMALL_S" --small-started "$SMALL_STARTED" --avail-s "$(left)" --trials "$TRIALS" --big-bytes "${BIG_BYTES:-0}" \
    --free-disk-bytes "$(free_bytes "$CACHE")" --loaders "$LOADERS" | sed 's/^/PLAN_/')"
  eval "$(plan_hot BIG)"
  if [ "$PLAN_TRIALS" -gt 0 ]; then
    step "loading_$BIG" "$PLAN_TRIALS trials $PLAN_LOADERS $BIG_STATES; $PLAN_NOTE${BIG_NOTE:+; $BIG_NOTE}" \
      loading "$BIG" "$PLAN_TRIALS" "$PLAN_LOADERS" "$BIG_STATES" delete_checkpoints=true \
      trial_timeout_s=$((TRIAL_TIMEOUT * 2)) ${BIG_EXTRA:+"$BIG_EXTRA"}
  else
    record "loading_$BIG" skipped 0 "$PLAN_NOTE"; say "loading_$BIG: $PLAN_NOTE"
  fi
else
  record "loading_$BIG" skipped 0 "$([ "$STOPPED" = 1 ] && echo "$WHY" || echo "no finished small run to size it from")"
fi

# 7. the ablation on the small model (its checkpoints are still on disk): trials or smoke, sized the same way
if [ $SMALL_OK = 1 ] && [ "$STOPPED" = 0 ]; then
  # shellcheck disable=SC2086
  eval "$("$PY" "$HELPER" plan-ablation --small-run "$M/sllm_loading/$SMALL" --small-step-s "$SMALL_S" \
    --small-started "$SMALL_STARTED" --avail-s "$(left)" --trials "$TRIALS" --variants "${ABL_ABLATION_STEPS:-6}" \
    --states "$n_states" $ABLATION_SMOKE | sed 's/^/PLAN_/')"
  if [ "$PLAN_TRIALS" -gt 0 ]; then
    step ablation "$PLAN_NOTE" harness experiment=sllm_ablation device="$DEVICE" progress=false dtype="$DTYPE" \
      model="$SMALL" cache_states="$ABLATION_STATES" trials="$PLAN_TRIALS" smoke="$PLAN_SMOKE" \
      trial_timeout_s="$TRIAL_TIMEOUT" hydra.run.dir="$M/sllm_ablation" "${RUN_ARGS[@]}"
  else
    record ablation skipped 0 "$PLAN_NOTE"; say "ablation: $PLAN_NOTE"
  fi
else
  record ablation skipped 0 "$([ "$STOPPED" = 1 ] && echo "$WHY" || echo "no finished small run to size it from")"
fi

# 8. tables in place (parquet -> csv, ceilings.csv) and the one-screen summary; runs out of the kept reserve
[ $SMALL_OK = 1 ] && "$PY" "$HELPER" ceilings "$M" >/dev/null 2>&1
rm -f "$M/steps.csv.tmp"
TOTAL=$(since "$T0")
say "summary (total ${TOTAL}s of ${BUDGET}s)"
"$PY" "$HELPER" summary "$M" $([ "$DRY" = 1 ] && echo --dryrun) --when "$(date -Is)" \
  --commit "$(git rev-parse --short HEAD 2>/dev/null)" --budget-s "$BUDGET" --total-s "$TOTAL" || FAILED=1
rmdir "$M/runs" 2>/dev/null
say "results in $M; $([ $FAILED = 0 ] && echo "every step passed" || echo "NOT every step passed: see steps.csv")"
exit $FAILED
