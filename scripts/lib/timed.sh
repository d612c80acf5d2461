# Sourced by the benchmark scripts (bench-build, bench-cli).
# timed LABEL COMMAND...: runs COMMAND with its output in $S/last.log (shown,
# then exit 1, when it fails) and prints LABEL, the wall time and the load
# average.
timed() {
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$S/last.log" 2>&1 || { cat "$S/last.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  printf '%-44s %6.2f s   (load %s)\n' "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$(cut -d' ' -f1-3 /proc/loadavg)"
}
