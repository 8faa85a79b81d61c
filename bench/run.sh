#!/usr/bin/env bash
# Runs ../shared/peers/bench.sh with this proxy as an extra target (rows `stream-token-proxy`),
# configured by bench/proxy.toml plus the environment bench.sh exports, and writes the table,
# the machine, the command and the date to BENCHMARKS.md (section "Latest run").
#
#   bench/run.sh                 REPEAT=3 (medians of 3 rounds, ~15 min), the numbers to quote
#   REPEAT=1 bench/run.sh        a quick look (~6 min)
#   ONLY='^hello/' bench/run.sh  a subset (regex on test/target, as in bench.sh)
# Other bench.sh knobs (DURATION, CONNS, ROTATE_N, ...) pass through.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
[ -x "$PEERS/bench.sh" ] || { echo "bench.sh not found at $PEERS (set PEERS=...)" >&2; exit 1; }
export REPEAT="${REPEAT:-3}"
PORT="${PORT:-18410}"

cd "$ROOT"
cargo build --release --locked
BIN="$ROOT/target/release/stream-token-proxy"

export PROXY_URL="https://127.0.0.1:$PORT"
export PROXY_NAME=stream-token-proxy
export PROXY_CWD="$ROOT"
# A simple command, so bench.sh execs it and measures the proxy's own PID.
export PROXY_CMD="PROXY_LISTEN=\$PROXY_HOST:\$PROXY_PORT exec $BIN --config $ROOT/bench/proxy.toml"

mkdir -p bench/results
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log="bench/results/run-$(date -u +%Y%m%d-%H%M%S).txt"
"$PEERS/bench.sh" 2>&1 | tee "$log"

# The table bench.sh printed (results/latest.txt) goes into BENCHMARKS.md with its context.
table="$PEERS/results/latest.txt"
{
  echo "## Latest run"
  echo
  echo "- date: $started"
  echo "- command: \`REPEAT=$REPEAT ${ONLY:+ONLY='$ONLY' }bench/run.sh\` (bench.sh with \`PROXY_CMD\` = this proxy, \`bench/proxy.toml\`)"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- proxy: $(git -C "$ROOT" rev-parse --short HEAD) ($($BIN --version))"
  echo
  echo '```'
  cat "$table"
  echo '```'
} >bench/results/latest-section.md
echo "Table and context written to bench/results/latest-section.md (paste into BENCHMARKS.md)"
