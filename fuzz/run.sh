#!/usr/bin/env bash
# Runs one target on one core (core 1, or $CORE) for SECONDS (default 600) and prints a summary line.
# Usage: fuzz/run.sh <target> [seconds]   (from anywhere; the log goes to fuzz/logs/)
set -u
cd "$(dirname "$0")"
target=$1
secs=${2:-600}
mkdir -p logs
log=logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log
extra=()
[ -f "dict/$target.dict" ] && extra+=("-dict=dict/$target.dict")
start=$(date +%s)
# CORE=n picks the core (default 1, the second; CORE=0 on a one-CPU machine); needs taskset.
RUSTC_BOOTSTRAP=1 taskset -c "${CORE:-1}" cargo fuzz run -O -a "$target" -- \
    -max_total_time="$secs" -rss_limit_mb=512 -timeout=5 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
rc=$?
wall=$(($(date +%s) - start))
execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}')
last=$(grep -E '^#[0-9]+' "$log" | tail -1)
corpus=$(find "corpus/$target" -type f | wc -l)
findings=$(ls "artifacts/$target" 2>/dev/null | tr '\n' ' ')
stat() { grep -o "stat::$1: *[0-9.]*" "$log" | awk '{print $2}'; }
echo "target=$target rc=$rc wall=${wall}s execs=${execs:-?} exec/s=$(stat average_exec_per_sec)" \
    "new_units=$(stat new_units_added) peak_rss_mb=$(stat peak_rss_mb)" \
    "slowest_unit_s=$(stat slowest_unit_time_sec) corpus_files=$corpus findings=[${findings}] log=$log"
echo "last: $last"
