#!/usr/bin/env bash
# Profiles the proxy under load: starts the peers' Node upstream (and JWKS server), the release
# binary with bench/proxy.toml on 127.0.0.1:18410, runs wrk for DURATION seconds against PATH_
# (default /api/hello; MODE=token for the token route) while `perf record` samples the proxy,
# then prints the top of `perf report`. Everything started here is stopped by PID.
#   bench/profile.sh                 pass-through
#   MODE=token bench/profile.sh      token route, one repeated session token
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
DURATION=${DURATION:-10}
MODE=${MODE:-get}
OUT=${OUT:-$ROOT/bench/results/perf-$MODE}
mkdir -p "$ROOT/bench/results"
command -v perf >/dev/null || apt-get install -y -qq linux-perf
cd "$ROOT" && cargo build --release --locked -q
pids=()
work=$(mktemp -d)
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# A throwaway certificate of the same kind as the peers' (RSA 2048, self-signed).
mkdir -p "$work/certs"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/certs/server.key" -out "$work/certs/server.crt" 2>/dev/null
export CLERK_ISSUER=https://clerk.example.test CLERK_AUTHORIZED_PARTIES=http://localhost:8081
export STREAM_API_SECRET=bench-stream-api-secret-not-for-production
export CLERK_JWKS_URL=http://127.0.0.1:18401/.well-known/jwks.json UPSTREAM_URL=http://127.0.0.1:18402
(cd "$PEERS" && exec node jwks/server.js --port 18401 >/dev/null 2>&1) & pids+=($!)
(cd "$PEERS" && PORT=18402 exec node upstream/server.js >/dev/null 2>&1) & pids+=($!)
PROXY_LISTEN=127.0.0.1:18410 TLS_CERT="$work/certs/server.crt" TLS_KEY="$work/certs/server.key" \
  "$ROOT/target/release/stream-token-proxy" --config "$ROOT/bench/proxy.toml" & pids+=($!)
proxy=$!
for _ in $(seq 100); do curl -skf https://127.0.0.1:18410/api/hello >/dev/null && break; sleep 0.1; done
tokens=$(mktemp)
(cd "$PEERS" && node jwks/mint.js --count 1 --ttl 600) >"$tokens"
WRK_MODE=$MODE WRK_TOKENS=$tokens wrk -t1 -c64 -d"$((DURATION + 2))"s -s "$PEERS/wrk/bench.lua" \
  "https://127.0.0.1:18410$([ "$MODE" = token ] && echo /api/stream/token || echo /api/hello)" >"$OUT.wrk" 2>&1 &
wrk=$!
sleep 1
cpu() { awk '{print $14 + $15}' "/proc/$proxy/stat"; }
switches() { cat /proc/"$proxy"/task/*/status | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'; }
ticks_before=$(cpu)
switches_before=$(switches)
if [ "${PERF:-1}" = 1 ]; then
  perf record -e cpu-clock -F 1999 -g -p "$proxy" -o "$OUT.data" -- sleep "$DURATION" 2>/dev/null
else
  sleep "$DURATION"
fi
ticks=$(( $(cpu) - ticks_before ))
ctx=$(( $(switches) - switches_before ))
wait "$wrk" || true
grep -E "Requests/sec|Latency" "$OUT.wrk" | head -3
rps=$(awk '/Requests\/sec/ {print $2}' "$OUT.wrk")
# CPU per request: clock ticks (1/100 s) over the requests served while sampling.
awk -v t="$ticks" -v r="$rps" -v d="$DURATION" -v c="$ctx" 'BEGIN { printf "proxy CPU: %.1f us/request (%.2f cores), %.3f voluntary context switches/request\n", t * 10000 / (r * d), t / 100 / d, c / (r * d) }'
[ "${PERF:-1}" = 1 ] || exit 0
perf report -i "$OUT.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -${TOP:-40}
