#!/usr/bin/env bash
# Instructions per request, independent of machine load: the target runs under
# `valgrind --tool=callgrind` (one worker) with instrumentation off; a client opens ONE
# keep-alive TLS connection, sends WARMUP requests, switches instrumentation on
# (callgrind_control -i on), sends N requests and switches it off. The count is exactly
# those N requests: no start-up, no TLS handshake, no aws-lc entropy seeding or clock
# calibration in it, so two runs agree to within a few instructions per request.
# User space only (the kernel is not counted).
#   bench/callgrind.sh                 GET /api/hello (pass-through)
#   MODE=token bench/callgrind.sh      POST /api/stream/token with one session token
#   MODE=token-cold bench/callgrind.sh POST /api/stream/token, a distinct session (sub, sid) per
#                                      request: every request misses the verified-session and
#                                      Stream-token caches (what production's 60 s tokens do)
#   MODE=h2 bench/callgrind.sh         GET /api/hello over HTTP/2: h2load, one connection, 10
#                                      streams at a time (its one TLS handshake, ~1/N of a
#                                      request each, is in the count)
#   TARGET=nginx bench/callgrind.sh    the same pass-through measurement of the peers' nginx
#                                      (with `http2` on its listener for MODE=h2)
#                                      (its nginx.conf.in, one worker, no master process)
#   TRACING=1 bench/callgrind.sh       with OpenTelemetry export on: a trace started for every
#                                      request (sample_ratio = 1.0), spans sent over OTLP/HTTP to
#                                      a local sink that answers 200 (the export thread counts)
#   PROXY_BIN=/path/to/binary          measure that build (another commit's, for a before/after)
#                                      instead of building this tree
#   N=3000 WARMUP=200                  the defaults
#   PORT_BASE=18400                    ports used: +1 JWKS, +2 Node, +10 proxy, +30 OTLP sink
#                                      (another base lets two checkouts measure at once)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
MODE=${MODE:-get}
TARGET=${TARGET:-proxy}
B=${PORT_BASE:-18400}
JWKS_PORT=$((B + 1)) NODE_PORT=$((B + 2)) PROXY_PORT=$((B + 10)) SINK_PORT=$((B + 30))
command -v valgrind >/dev/null || apt-get install -y -qq valgrind
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
export CLERK_JWKS_URL=http://127.0.0.1:$JWKS_PORT/.well-known/jwks.json UPSTREAM_URL=http://127.0.0.1:$NODE_PORT
(cd "$PEERS" && exec node jwks/server.js --port $JWKS_PORT >/dev/null 2>&1) & pids+=($!)
(cd "$PEERS" && PORT=$NODE_PORT exec node upstream/server.js >/dev/null 2>&1) & pids+=($!)
sed 's/^workers = .*/workers = 1/' bench/proxy.toml >"$work/proxy.toml"
if [ "${TRACING:-0}" = 1 ]; then
  python3 -c '
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()' "$SINK_PORT" & pids+=($!)
  printf '\n[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = 1.0\n' "$SINK_PORT" >>"$work/proxy.toml"
fi
# A throwaway certificate of the same kind as the peers' (RSA 2048, self-signed).
mkdir -p "$work/certs"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/certs/server.key" -out "$work/certs/server.crt" 2>/dev/null
cat "$work/certs/server.crt" "$work/certs/server.key" >"$work/certs/server.pem"
N=${N:-3000}
WARMUP=${WARMUP:-200}
tokens="$work/tokens.txt"
count=1
if [ "$MODE" = token-cold ]; then count=$((N + WARMUP + 1)); fi
(cd "$PEERS" && node jwks/mint.js --count "$count" --ttl 600) >"$tokens"
out="$work/cg.out"
if [ "$TARGET" = nginx ]; then
  mkdir -p "$work/nginx/tmp"
  listen=$PROXY_PORT
  if [ "$MODE" = h2 ]; then listen="$PROXY_PORT http2"; fi
  sed -e "s/@UPSTREAM_PORT@/$NODE_PORT/; s/@PORT@/$listen/; s/^worker_processes .*/worker_processes 1;/" \
    -e "s#\.\./certs/#$work/certs/#" "$PEERS/nginx/nginx.conf.in" >"$work/nginx/nginx.conf"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    nginx -p "$work/nginx/" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
    -g 'daemon off; master_process off;' >/dev/null 2>&1 &
else
  PROXY_LISTEN=127.0.0.1:$PROXY_PORT TLS_CERT="$work/certs/server.crt" TLS_KEY="$work/certs/server.key" \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$PROXY_BIN" --config "$work/proxy.toml" >/dev/null 2>&1 &
fi
target=$!
pids+=("$target")
for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT) 2>/dev/null && break; sleep 0.1; done
sleep 1 # let the first JWKS fetch land
if [ "$MODE" = h2 ]; then
  h2load -n "$WARMUP" -c 1 -m 10 https://127.0.0.1:$PROXY_PORT/api/hello >/dev/null
  callgrind_control -i on "$target" >/dev/null
  h2load -n "$N" -c 1 -m 10 https://127.0.0.1:$PROXY_PORT/api/hello | grep '^status codes'
  callgrind_control -i off "$target" >/dev/null
else
# One connection: WARMUP requests, instrumentation on, N requests, instrumentation off.
PROXY_PORT=$PROXY_PORT MODE=$MODE TOKENS=$tokens TARGET_PID=$target N=$N WARMUP=$WARMUP python3 - <<'PY'
import http.client, os, ssl, subprocess
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", int(os.environ["PROXY_PORT"]), context=ctx, timeout=60)
tokens = iter(open(os.environ["TOKENS"]).read().split())
if os.environ["MODE"].startswith("token"):
    method, path, body = "POST", "/api/stream/token", b"{}"
    token = next(tokens)
    cold = os.environ["MODE"] == "token-cold"
    def headers():
        # token-cold: the next never-seen token; token: the same one every time.
        return {"Authorization": "Bearer " + (next(tokens) if cold else token),
                "Content-Type": "application/json"}
else:
    method, path, body = "GET", "/api/hello", None
    def headers():
        return {}
def run(n):
    for _ in range(n):
        conn.request(method, path, body=body, headers=headers())
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
def instrumentation(state):
    subprocess.run(["callgrind_control", "-i", state, os.environ["TARGET_PID"]],
                   check=True, stdout=subprocess.DEVNULL)
run(int(os.environ["WARMUP"]))
instrumentation("on")
run(int(os.environ["N"]))
instrumentation("off")
conn.close()
PY
fi
kill -TERM "$target"; wait "$target" || true
total=$(awk '/^totals:/ {print $2; exit}' "$out")
name=$MODE
if [ "$TARGET" = nginx ]; then name=$MODE-nginx; fi
if [ "${TRACING:-0}" = 1 ]; then name=$name-traced; fi
mkdir -p "$ROOT/bench/results" && cp "$out" "$ROOT/bench/results/callgrind-$name.out"
echo "target=$TARGET mode=$MODE tracing=${TRACING:-0}: $(( total / N )) instructions per request (Ir over $N requests: $total)"
echo "profile: callgrind_annotate bench/results/callgrind-$name.out"
