#!/usr/bin/env bash
# Soak (issue 20): DURATION (default 30m) of mixed traffic through the release proxy in front of
# the test Node upstream, with a SIGHUP every 30 s and a certificate rotation every 2 minutes.
# bench/soak.js drives the traffic and the signals; once a minute it records the proxy's RSS
# (/proc/<pid>/status), its open fds (/proc/<pid>/fd), stream_token_proxy_open_connections
# from /metrics and the errors; at the end it prints a table and writes an SVG chart.
#
# Traffic: cold session tokens (a new user and a new token every time, TOKEN_RATE, 40/s: the
# verified-session and Stream-token caches (10,000 each) fill within the 5 minutes of warm-up),
# forwarded GETs over HTTP/1.1 and HTTP/2, 1 MiB uploads and downloads (sha256 checked),
# WebSocket echoes (short sessions plus one that lives for the whole run) and a few slowloris
# clients (the proxy must cut them off; those cut-offs are expected, everything else is an error).
#
# The certificate lives where a Kubernetes Secret volume puts it: tls/tls.crt and tls/tls.key are
# symlinks into tls/..data, which points at a timestamped directory; a rotation writes a new pair
# (signed by the soak's own CA, which the clients trust) into a new directory and swaps ..data
# atomically, as the kubelet does. The proxy picks it up on its reload_interval poll or SIGHUP.
#
# Usage: bench/soak.sh                   # 30 minutes
#        DURATION=5m WARMUP=1m bench/soak.sh
#        HEAPTRACK=1 DURATION=15m bench/soak.sh   # the same under heaptrack (system allocator)
# HEAPTRACK=1 writes OUT/heaptrack.zst (`heaptrack_print` it); its RSS then includes heaptrack's
# own memory and glibc's malloc, so its verdict is not comparable with a normal run's.
# Env: DURATION, WARMUP (default 5m: excluded from the flatness check), TOKEN_RATE (40/s),
#      SIGHUP_EVERY (30s), ROTATE_EVERY (2m), SAMPLE_EVERY (1m), OUT (default
#      bench/results/soak-<date>), PORT_BASE (18520: proxy, +1 admin, +2 Node).
# Every minute: VmRSS, RssAnon, RssFile, AnonHugePages (transparent huge pages), fds, open
# connections, requests and errors. Output: OUT/soak.md (table and verdict), OUT/soak.svg (chart; soak.png too with rsvg-convert),
# OUT/samples.json, logs. `node bench/soak.js --chart OUT/samples.json --duration D --warmup W`
# redraws the chart.
# Targets: 0 errors other than slowloris cut-offs; after WARMUP, RSS within 2 MiB and the fd count
# within 16 (max - min over the samples). Exit status 1 when a target is missed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORT_BASE=${PORT_BASE:-18520}
OUT=${OUT:-$ROOT/bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
HEAPTRACK=${HEAPTRACK:-0}
if [ "$HEAPTRACK" = 1 ]; then
  # heaptrack hooks malloc, so the proxy is built on the system allocator (no mimalloc), in a
  # target directory of its own; the profile shows the live heap over time and who holds it.
  # (with line tables, so the profile names files and lines)
  [ -n "${SKIP_BUILD:-}" ] || CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --locked -q --no-default-features --target-dir "$ROOT/target/heaptrack"
  BIN="$ROOT/target/heaptrack/release/stream-token-proxy"
else
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q
  BIN="$ROOT/target/release/stream-token-proxy"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# ---- a CA for the soak and the first certificate, in the layout of a Secret volume ----
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=soak CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
mkdir -p "$work/tls"
echo "== rotation 0"
node "$ROOT/bench/soak.js" --rotate-only "$work" >/dev/null

# ---- the test upstream; it exits when this script's fd 7 (its stdin) closes ----
mkfifo "$work/upstream.stdin"
PORT=$((PORT_BASE + 2)) node tests/upstream/server.js <"$work/upstream.stdin" >"$OUT/upstream.log" 2>&1 &
pids+=($!)
exec 7>"$work/upstream.stdin"

cat >"$work/proxy.toml" <<TOML
# The dev profile (dev signing key, dev Stream secret, loopback) with the production timeouts.
dev = true
[server]
listen = "127.0.0.1:$PORT_BASE"
reload_interval = "10s"
[admin]
listen = "127.0.0.1:$((PORT_BASE + 1))"
[tls]
cert = "tls/tls.crt"
key = "tls/tls.key"
[upstream]
url = "http://127.0.0.1:$((PORT_BASE + 2))"
[auth]
dev_signing_key = "dev-signing-key.pem"
[stream]
api_secret_file = "dev-stream-secret"
[limits]
# Every client here is 127.0.0.1: the per-IP limit would measure the limiter, not a leak.
# Each cold token is a new user, so the per-user limit never bites.
token_per_ip = { requests = 1000000, period = "1m", burst = 100000 }
[log]
level = "warn"
TOML
# The template token (and the dev signing key it is signed with, generated on first use):
# soak.js re-signs it for user_1, user_2, ... with that key, since starting the binary 30 times
# a second for `dev-token --sub user_N` would take a core of this machine.
"$BIN" --config "$work/proxy.toml" dev-token --sub user_0 --ttl 3600 >"$work/template.jwt"

if [ "$HEAPTRACK" = 1 ]; then
  heaptrack -o "$OUT/heaptrack" "$BIN" --config "$work/proxy.toml" >"$OUT/proxy.log" 2>&1 &
  heaptrack_pid=$!
  pids+=($heaptrack_pid)
  # The proxy is the wrapper's child running $BIN (its other children are short-lived shells
  # whose command lines name $BIN too).
  proxy=
  for _ in $(seq 100); do
    for child in $(pgrep -P "$heaptrack_pid" || true); do
      [ "$(readlink "/proc/$child/exe" 2>/dev/null)" = "$BIN" ] && proxy=$child
    done
    [ -n "$proxy" ] && break
    sleep 0.1
  done
  [ -n "$proxy" ] || { echo "heaptrack did not start the proxy"; cat "$OUT/proxy.log"; exit 1; }
else
  "$BIN" --config "$work/proxy.toml" >"$OUT/proxy.log" 2>&1 &
  proxy=$!
fi
pids+=($proxy)
ready=
for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$((PORT_BASE + 1))/readyz" >/dev/null 2>&1 &&
    curl -sf --cacert "$work/ca.crt" "https://localhost:$PORT_BASE/api/hello" \
      --resolve "localhost:$PORT_BASE:127.0.0.1" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
[ -n "$ready" ] || { echo "proxy not ready in 10 s"; cat "$OUT/proxy.log"; exit 1; }
echo "proxy pid $proxy, Node upstream on $((PORT_BASE + 2)); results in $OUT"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

status=0
node "$ROOT/bench/soak.js" \
  --work "$work" --out "$OUT" --pid "$proxy" --port "$PORT_BASE" --admin $((PORT_BASE + 1)) \
  --duration "${DURATION:-30m}" --warmup "${WARMUP:-5m}" --token-rate "${TOKEN_RATE:-40}" \
  --sighup-every "${SIGHUP_EVERY:-30s}" --rotate-every "${ROTATE_EVERY:-2m}" \
  --sample-every "${SAMPLE_EVERY:-1m}" || status=$?
kill -0 "$proxy" 2>/dev/null || { echo "the proxy died during the soak"; status=1; }
if [ "$HEAPTRACK" = 1 ]; then
  # heaptrack writes its file once the proxy has exited; the cleanup's SIGKILL must not cut it.
  kill "$proxy" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$heaptrack_pid" 2>/dev/null || break; sleep 0.1; done
  echo "heap profile: $OUT/heaptrack.zst (heaptrack_print $OUT/heaptrack.zst, or heaptrack_gui)"
fi
# A PNG beside the SVG where librsvg's converter is installed (Debian: librsvg2-bin).
if [ -f "$OUT/soak.svg" ] && command -v rsvg-convert >/dev/null; then
  rsvg-convert "$OUT/soak.svg" -o "$OUT/soak.png" && echo "chart: $OUT/soak.png"
fi
exit $status
