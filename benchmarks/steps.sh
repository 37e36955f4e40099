# Sourced by the benchmark scripts (cold_path_cpu.sh, engine_phases_cpu.sh, runtime_cpu.sh): one step is one
# `python -m harness` run into $OUT/<name>/ with its console log beside it as $OUT/<name>.log. The caller sets PY,
# OUT, FAILED (set to 1 when a step fails), TAG (its name in the progress lines), SHOWN (log lines echoed after a
# step) and EXTRA (overrides every step of that script gets, as an array; may be empty).
run() {  # name overrides...
  local name=$1; shift
  echo "[$TAG] $(date +%T) $name: $*"
  "$PY" -m harness "$@" progress=false "${EXTRA[@]}" hydra.run.dir="$OUT/$name" >"$OUT/$name.log" 2>&1 || FAILED=1
  grep -v -e WARN -e Warning "$OUT/$name.log" | tail -n "$SHOWN"
}
