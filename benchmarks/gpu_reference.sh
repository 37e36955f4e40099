#!/usr/bin/env bash
# The GPU reference runs of the loading suite, end to end, on a machine with a CUDA device:
#   sllm_loading (the paper's ladder, copies as the cold method, one model on disk at a time), sllm_ablation
#   and calibrate, then the sllm-store comparison; everything lands in results/reference/<machine>/.
# Here:        ../shared/tools/device-wheels.sh     (gathers the wheels the device image lacks into .whl/)
# On the GPU:  bash benchmarks/gpu_reference.sh [MODELS]   (MODELS default: the paper's ladder; OUT=dir copies too)
# A machine without CUDA stops at once with a clear message: these runs are meaningless on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl
  export PYTHONPATH=$PWD:$PWD/.site
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PY:-python3}
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_reference.sh: no CUDA device visible; run it on a GPU machine")'
machine=$($PY -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-").lower())')
models=${1:-[opt-2.7b,opt-6.7b,opt-13b,llama-2-7b,llama-2-13b]}
free_gb=$(df -BG --output=avail "${COLDSTART_CACHE:-$HOME/.cache}" 2>/dev/null | tail -1 | tr -dc 0-9)
echo "machine=$machine models=$models free disk=${free_gb}G"
export COLDSTART_RESULTS=${COLDSTART_RESULTS:-$PWD/results}
ref=results/reference/$machine
mkdir -p "$ref"
# cold = distinct copies as ServerlessLLM does; trials=3 keeps copies of a 26 GB model within a 64 GB disk
loading_dir=$($PY -m harness experiment=sllm_loading device=cuda progress=false models="$models" cold_method=copies \
  trials=3 delete_checkpoints=true >&2; ls -td "$COLDSTART_RESULTS"/runs/sllm_loading/* | head -1)
ablation_dir=$($PY -m harness experiment=sllm_ablation device=cuda progress=false model=opt-6.7b trials=3 >&2; \
  ls -td "$COLDSTART_RESULTS"/runs/sllm_ablation/* | head -1)
calib_dir=$($PY -m harness experiment=calibrate device=cuda progress=false models=[opt-1.3b,opt-6.7b] \
  link_gbps=1.25 >&2; ls -td "$COLDSTART_RESULTS"/runs/calibrate/* | head -1)
$PY -m experiments.report "$loading_dir" --sllm-reference --out "$ref/sllm_comparison" || true
for d in "$loading_dir" "$ablation_dir" "$calib_dir"; do
  name=$(basename "$(dirname "$d")")
  mkdir -p "$ref/$name"
  cp "$d"/*.csv "$d"/*.json "$d"/*.png "$ref/$name"/ 2>/dev/null || true
  cp "$d"/*.yaml "$ref/$name"/ 2>/dev/null || true
done
nvidia-smi > "$ref/nvidia-smi.txt" 2>&1 || true
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp -r "$ref" "$OUT"/; fi
echo "GPU reference results in $ref"
