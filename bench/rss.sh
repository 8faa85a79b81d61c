#!/usr/bin/env bash
# Peak RSS on default settings (bench/proxy.toml: the harness's config, limits off) after the
# harness's kinds of load, without the rest of the harness: the release proxy with two workers
# in front of the peers' JWKS server and Node upstream, loaded by wrk (CONNS connections) with
# COLD_N distinct session tokens cycled (every one a cache miss until the caches are full),
# one token, GET /api/hello, and a new TLS connection per request (token and hello). Prints
# VmHWM after each phase and, at the end, where the resident memory is (smaps_rollup).
#   bench/rss.sh                    COLD_N=40000 CONNS=64 SECS=8 (seconds per phase)
#   PROXY_BIN=/path/to/binary       measure that build instead of building this tree
#   PROXY_CONFIG=other.toml         another config (default bench/proxy.toml)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
COLD_N=${COLD_N:-40000}
CONNS=${CONNS:-64}
SECS=${SECS:-8}
cd "$ROOT"
if [ -z "${PROXY_BIN:-}" ]; then
  cargo build --release --locked -q
  PROXY_BIN="$ROOT/target/release/stream-token-proxy"
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export CLERK_ISSUER=https://clerk.example.test CLERK_AUTHORIZED_PARTIES=http://localhost:8081
export STREAM_API_SECRET=bench-stream-api-secret-not-for-production
export CLERK_JWKS_URL=http://127.0.0.1:18451/.well-known/jwks.json UPSTREAM_URL=http://127.0.0.1:18452
(cd "$PEERS" && exec node jwks/server.js --port 18451 >/dev/null 2>&1) & pids+=($!)
(cd "$PEERS" && PORT=18452 exec node upstream/server.js >/dev/null 2>&1) & pids+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/server.key" -out "$work/server.crt" 2>/dev/null
half=$((COLD_N / 2))
(cd "$PEERS" && node jwks/mint.js --count "$half" --start 100000 --ttl 1800) >"$work/cold.a" &
minting=$!
(cd "$PEERS" && node jwks/mint.js --count "$((COLD_N - half))" --start $((100000 + half)) --ttl 1800) >"$work/cold.b"
wait "$minting"
cat "$work/cold.a" "$work/cold.b" >"$work/cold.txt"
(cd "$PEERS" && node jwks/mint.js --count 1 --ttl 1800) >"$work/one.txt"
PROXY_LISTEN=127.0.0.1:18450 TLS_CERT="$work/server.crt" TLS_KEY="$work/server.key" \
  "$PROXY_BIN" --config "${PROXY_CONFIG:-bench/proxy.toml}" >"$work/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
for _ in $(seq 100); do curl -sk -o /dev/null https://127.0.0.1:18450/api/hello && break; sleep 0.1; done
hwm() { awk '/^VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$proxy/status"; }
echo "started: $(hwm)"
load() { # name mode tokens close
  WRK_MODE=$2 WRK_TOKENS=$3 WRK_CLOSE=$4 wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$PEERS/wrk/bench.lua" \
    https://127.0.0.1:18450 >"$work/wrk-$1.txt" 2>&1
  printf '%-11s %8s req/s   peak RSS %s\n' "$1" "$(awk '/^Requests\/sec/ {print $2}' "$work/wrk-$1.txt")" "$(hwm)"
}
load token-cold token "$work/cold.txt" 0
load token-1 token "$work/one.txt" 0
load hello get - 0
load token-conn token "$work/one.txt" 1
load hello-conn get - 1
echo "now: $(awk '/^VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$proxy/status")"
grep -E '^(Rss|Anonymous|Shared_Clean|Private_Clean|Private_Dirty)' "/proc/$proxy/smaps_rollup"
