#!/usr/bin/env bash
# The token route with limits.backend = "redis" beside "local", in one run, rows interleaved
# (issue 18). Rows: local; redis (as shipped: these quotas are far over 1024 cells, so a hot
# key reserves cells and needs few round trips); redis-exact (limits.redis.reserve = false:
# every request counted in Redis one by one, only concurrent checks of a key share a call). Both proxies are bench/proxy.toml with the per-IP and per-user limits switched
# on at quotas wrk never reaches (so every request is checked and none is refused); the redis
# one counts in a redis-server started here (persistence off). The load is the peers harness's
# own pieces (../shared/peers): its JWKS server and Node upstream, a token from jwks/mint.js,
# wrk with wrk/bench.lua (`token (1 token)`: one token, kept-alive connections).
#
#   bench/redis.sh                 REPEAT=3 rounds of DURATION=10 s per row (~2 min)
#   REPEAT=1 DURATION=5 bench/redis.sh
#
# Prints the table (req/s, p50, p99, Redis round trips per request from INFO commandstats)
# and writes it to bench/results/redis-latest.md. Everything it starts, it stops by PID.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
REPEAT="${REPEAT:-3}" DURATION="${DURATION:-10}" WARMUP="${WARMUP:-3}" CONNS="${CONNS:-64}"
BASE="${BASE_PORT:-18420}"
JWKS_PORT=$((BASE + 1)) UPSTREAM_PORT=$((BASE + 2)) REDIS_PORT=$((BASE + 3))
declare -A PORT=([local]=$((BASE + 4)) [redis]=$((BASE + 5)) [redis-exact]=$((BASE + 6)))
TARGETS=(local redis redis-exact)
[ -f "$PEERS/wrk/bench.lua" ] || { echo "peers harness not found at $PEERS (set PEERS=...)" >&2; exit 1; }
for tool in wrk redis-server openssl curl node; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install wrk redis-server openssl curl nodejs)" >&2; exit 1; }
done

cd "$ROOT"
cargo build --release --locked
BIN="$ROOT/target/release/stream-token-proxy"
RUN="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
log() { printf '[redis-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
wait_http() { # url
  for _ in $(seq 1 200); do
    curl -sk -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.05
  done
  echo "nothing answers at $1" >&2
  exit 1
}

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
export CLERK_ISSUER=https://clerk.example.test CLERK_AUTHORIZED_PARTIES=http://localhost:8081
export STREAM_API_SECRET=bench-stream-api-secret-not-for-production
export CLERK_JWKS_URL="http://127.0.0.1:$JWKS_PORT/.well-known/jwks.json"
export UPSTREAM_URL="http://127.0.0.1:$UPSTREAM_PORT" TLS_CERT="$RUN/cert.pem" TLS_KEY="$RUN/key.pem"

(cd "$PEERS" && exec node jwks/server.js --port "$JWKS_PORT") >"$RUN/jwks.log" 2>&1 &
PIDS+=($!)
(cd "$PEERS" && PORT=$UPSTREAM_PORT exec node upstream/server.js) >"$RUN/upstream.log" 2>&1 &
PIDS+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning \
  --dir "$RUN" >"$RUN/redis.log" 2>&1 &
PIDS+=($!)
wait_http "$CLERK_JWKS_URL"
(cd "$PEERS" && node jwks/mint.js --count 1 --start 0 --ttl 1800) >"$RUN/tokens-1.txt"

# bench/proxy.toml, with the limits on (and, for the redis row, counted in Redis).
huge='{ requests = 100000000, period = "1s" }'
for target in "${TARGETS[@]}"; do
  sed -e "s|^token_per_ip = .*|token_per_ip = $huge|" -e "s|^token_per_user = .*|token_per_user = $huge|" \
    bench/proxy.toml >"$RUN/$target.toml"
done
for target in redis redis-exact; do
  sed -i "s|^\[limits\]|[limits]\nbackend = \"redis\"|" "$RUN/$target.toml"
  printf '\n[limits.redis]\nurl = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT" >>"$RUN/$target.toml"
done
echo 'reserve = false' >>"$RUN/redis-exact.toml"
grep -q 'requests = 100000000' "$RUN/redis.toml" || { echo "bench/proxy.toml's limits changed shape" >&2; exit 1; }

for target in "${TARGETS[@]}"; do
  PROXY_LISTEN="127.0.0.1:${PORT[$target]}" "$BIN" --config "$RUN/$target.toml" >"$RUN/$target.log" 2>&1 &
  PIDS+=($!)
  wait_http "https://127.0.0.1:${PORT[$target]}/api/hello"
done
token_url() { echo "https://127.0.0.1:${PORT[$1]}/api/stream/token"; }
code=$(curl -sk -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $(cat "$RUN/tokens-1.txt")" "$(token_url redis)")
[ "$code" = 200 ] || { echo "the redis proxy answered $code"; cat "$RUN/redis.log"; exit 1; }

evalsha_calls() {
  redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
    awk -F'[=,:]' '/^cmdstat_evalsha:/ {print $3; found=1} END {if (!found) print 0}'
}
wrk_run() { # target seconds -> WRKJSON line
  (cd "$PEERS" && WRK_MODE=token WRK_TOKENS="$RUN/tokens-1.txt" \
    wrk -t1 -c"$CONNS" -d"$2"s --latency -s wrk/bench.lua "$(token_url "$1")") |
    sed -n 's/^WRKJSON //p'
}
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

: >"$RUN/rows"
for round in $(seq 1 "$REPEAT"); do
  for target in "${TARGETS[@]}"; do
    wrk_run "$target" "$WARMUP" >/dev/null
    before=$(evalsha_calls)
    line=$(wrk_run "$target" "$DURATION")
    after=$(evalsha_calls)
    requests=$(json "$line" requests)
    rps=$(python3 -c "print(round($requests / ($(json "$line" duration_us) / 1e6)))")
    trips=$(python3 -c "print(f'{($after - $before) / max($requests, 1):.2f}')")
    errors=$(( $(json "$line" err_status) + $(json "$line" err_timeout) + $(json "$line" err_read) ))
    echo "$round $target $rps $(json "$line" p50_us) $(json "$line" p99_us) $trips $errors" >>"$RUN/rows"
    log "round $round $target: $rps req/s, p99 $(json "$line" p99_us) us, $trips Redis round trips/request, $errors errors"
  done
done

# Medians over the rounds, and redis against local.
table=$(python3 - "$RUN/rows" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for target in ("local", "redis", "redis-exact"):
    mine = [r for r in rows if r[1] == target]
    rps = [int(r[2]) for r in mine]
    med[target] = dict(
        rps=statistics.median(rps), lo=min(rps), hi=max(rps),
        p50=statistics.median(int(r[3]) for r in mine) / 1000,
        p99=statistics.median(int(r[4]) for r in mine) / 1000,
        trips=statistics.median(float(r[5]) for r in mine), errors=sum(int(r[6]) for r in mine))
print("| token (1 token), limits.backend | req/s (median) | req/s range | p50 ms | p99 ms | Redis round trips / request | errors |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for target, m in med.items():
    print(f"| {target} | {m['rps']:.0f} | {m['lo']}-{m['hi']} | {m['p50']:.2f} | {m['p99']:.2f} | {m['trips']:.2f} | {m['errors']} |")
l = med["local"]
print()
for target in ("redis", "redis-exact"):
    r = med[target]
    print(f"{target} vs local: {100 * (r['rps'] / l['rps'] - 1):+.1f} % req/s, p99 {r['p99'] - l['p99']:+.2f} ms  ")
EOF
)
{
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- command: \`REPEAT=$REPEAT DURATION=$DURATION bench/redis.sh\` (wrk -t1 -c$CONNS, ${DURATION} s per row after ${WARMUP} s warm-up, rows interleaved)"
  echo "- machine: $(nproc) cores, $(uname -sr), $(redis-server --version | cut -d' ' -f1-3)"
  echo "- proxy: $(git -C "$ROOT" rev-parse --short HEAD) ($($BIN --version))"
  echo
  echo "$table"
} | (mkdir -p bench/results && tee bench/results/redis-latest.md)
