#!/usr/bin/env bash
# CPU per new TLS connection, full and resumed handshakes apart, for this proxy and the peers'
# nginx (../shared/peers/nginx, the same RSA-2048 certificate), both in front of the same Node
# upstream. The peers' `*-conn` rows use wrk, whose OpenSSL resumes its sessions: those rows are
# resumed handshakes (the proxy's tls_handshakes_total says so). Here `openssl s_time` makes
# the two kinds on purpose: `-new` (a full handshake every connection: the server signs with its
# RSA key) and `-reuse` (every connection after the first resumes its session), each connection
# sending GET /api/hello (HTTP/1.0, so it closes after the response). CLIENTS s_time processes
# run at once for DURATION seconds per row; the server's CPU (utime + stime of all its
# processes, /proc/<pid>/stat) is divided by the connections made.
#   bench/handshakes.sh                    ROUNDS=3 DURATION=8 CLIENTS=4
#   PROXY_BIN=/path/to/binary bench/handshakes.sh
# Prints one line per round, target and kind; then the proxy's tls_handshakes_total.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-4}
PORT_BASE=${PORT_BASE:-18430} # proxy, +1 admin, +2 Node, +3 nginx
[ -f "$PEERS/certs/server.crt" ] || { echo "run SETUP_ONLY=1 $PEERS/bench.sh first (certs)" >&2; exit 1; }
if [ -z "${PROXY_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -q)
  PROXY_BIN="$ROOT/target/release/stream-token-proxy"
fi
run=$(mktemp -d)
mkdir -p "$run/tmp" # nginx's temp paths
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

up_port=$((PORT_BASE + 2)) nginx_port=$((PORT_BASE + 3))
(cd "$PEERS" && PORT=$up_port exec node upstream/server.js >/dev/null 2>&1) &
up=$!
pids+=($up)
sed -e "s/@PORT@/$nginx_port/; s/@UPSTREAM_PORT@/$up_port/" -e "s#\.\./certs/#$PEERS/certs/#g" \
  -e "s#pid nginx.pid;#pid $run/nginx.pid;#" "$PEERS/nginx/nginx.conf.in" >"$run/nginx.conf"
nginx -p "$run/" -e "$run/error.log" -c "$run/nginx.conf" -g 'daemon off;' &
ng=$!
pids+=($ng)
sed -e "s/^listen = \"127.0.0.1:0\"/listen = \"127.0.0.1:$((PORT_BASE + 1))\"/" "$ROOT/bench/proxy.toml" >"$run/proxy.toml"
PROXY_LISTEN=127.0.0.1:$PORT_BASE UPSTREAM_URL=http://127.0.0.1:$up_port \
  TLS_CERT="$PEERS/certs/server.crt" TLS_KEY="$PEERS/certs/server.key" \
  STREAM_API_SECRET=bench-stream-api-secret-not-for-production \
  "$PROXY_BIN" --config "$run/proxy.toml" >"$run/proxy.log" 2>&1 &
px=$!
pids+=($px)
ready=
for _ in $(seq 100); do
  if curl -sk -o /dev/null "https://127.0.0.1:$PORT_BASE/api/hello" &&
    curl -sk -o /dev/null "https://127.0.0.1:$nginx_port/api/hello"; then
    ready=1
    break
  fi
  sleep 0.1
done
# Alive and answering (a port held by a stale process would answer for a dead one).
kill -0 "$up" "$ng" "$px" 2>/dev/null && [ -n "$ready" ] ||
  { echo "the proxy, nginx or Node did not start" >&2; cat "$run/proxy.log" "$run/error.log" >&2; exit 1; }

ticks() {
  local s=0 p
  for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$s"
}
hz=$(getconf CLK_TCK)
# CLIENTS s_time processes at once; prints the connections they made in total. A client that
# saw a failed connection prints no summary: that fails the run (its connections' CPU would
# otherwise count against the others').
connections() {
  local port=$1 kind=$2 i clients=()
  for i in $(seq "$CLIENTS"); do
    openssl s_time -connect "127.0.0.1:$port" "-$kind" -time "$DURATION" -www /api/hello \
      >"$run/s_time.$i" 2>&1 &
    clients+=($!)
  done
  wait "${clients[@]}" || true
  local summaries
  summaries=$(cat "$run"/s_time.* | grep -cE 'connections in [0-9.]+ real seconds' || true)
  if [ "$summaries" != "$CLIENTS" ]; then
    echo "only $summaries of $CLIENTS s_time clients finished (port $port, -$kind):" >&2
    tail -n 3 "$run"/s_time.* >&2
    return 1
  fi
  cat "$run"/s_time.* | awk '/connections in [0-9.]+ real seconds/ {n += $1} END {print n + 0}'
}
for r in $(seq "$ROUNDS"); do
  for target in nginx proxy; do
    if [ $target = nginx ]; then port=$nginx_port; tp="$(pgrep -d' ' -P $ng || true) $ng"; else port=$PORT_BASE; tp=$px; fi
    for kind in new reuse; do
      # s_time runs from D to D+1 seconds: the window is timed here, not taken as D.
      c0=$(ticks $tp); u0=$(ticks $up); t0=$(date +%s.%N)
      n=$(connections "$port" "$kind")
      c1=$(ticks $tp); u1=$(ticks $up); t1=$(date +%s.%N)
      printf 'round %s %-6s %-7s %6s connections  %7.1f conn/s  cpu %7s us/conn  upstream %6s us/conn\n' \
        "$r" "$target" "$([ $kind = new ] && echo full || echo resumed)" "$n" \
        "$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN{print n / (b - a)}')" \
        "$(awk -v c=$((c1 - c0)) -v n="$n" -v hz="$hz" 'BEGIN{printf "%.1f", n ? c / hz / n * 1e6 : 0}')" \
        "$(awk -v c=$((u1 - u0)) -v n="$n" -v hz="$hz" 'BEGIN{printf "%.1f", n ? c / hz / n * 1e6 : 0}')"
    done
  done
done
curl -s "http://127.0.0.1:$((PORT_BASE + 1))/metrics" | grep '^stream_token_proxy_tls_handshakes_total' || true
