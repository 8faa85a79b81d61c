#!/usr/bin/env bash
# Instructions per request, independent of machine load: the proxy runs under
# `valgrind --tool=callgrind` (one worker) and curl sends N requests over ONE keep-alive TLS
# connection, for N = 200 and N = 3200; (Ir(3200) - Ir(200)) / 3000 is the cost of one request
# (start-up, with aws-lc's jitter-entropy seeding, varies by a few million instructions per run;
# 3,000 requests keep that under ~1,000 per request)
# with start-up and the TLS handshake taken out. User space only (the kernel is not counted).
#   bench/callgrind.sh                 GET /api/hello (pass-through)
#   MODE=token bench/callgrind.sh      POST /api/stream/token with one session token
#   TARGET=nginx bench/callgrind.sh    the same pass-through measurement of the peers' nginx
#                                      (its nginx.conf.in, one worker, no master process)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
MODE=${MODE:-get}
TARGET=${TARGET:-proxy}
command -v valgrind >/dev/null || apt-get install -y -qq valgrind
cd "$ROOT" && cargo build --release --locked -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export CLERK_ISSUER=https://clerk.example.test CLERK_AUTHORIZED_PARTIES=http://localhost:8081
export STREAM_API_SECRET=bench-stream-api-secret-not-for-production
export CLERK_JWKS_URL=http://127.0.0.1:18401/.well-known/jwks.json UPSTREAM_URL=http://127.0.0.1:18402
(cd "$PEERS" && exec node jwks/server.js --port 18401 >/dev/null 2>&1) & pids+=($!)
(cd "$PEERS" && PORT=18402 exec node upstream/server.js >/dev/null 2>&1) & pids+=($!)
sed 's/^workers = .*/workers = 1/' bench/proxy.toml >"$work/proxy.toml"
# A throwaway certificate of the same kind as the peers' (RSA 2048, self-signed).
mkdir -p "$work/certs"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/certs/server.key" -out "$work/certs/server.crt" 2>/dev/null
cat "$work/certs/server.crt" "$work/certs/server.key" >"$work/certs/server.pem"
token=$(cd "$PEERS" && node jwks/mint.js --count 1 --ttl 600)

instructions() { # requests
  local out="$work/cg.$1"
  if [ "$TARGET" = nginx ]; then
    mkdir -p "$work/nginx/tmp"
    sed -e 's/@UPSTREAM_PORT@/18402/; s/@PORT@/18410/; s/^worker_processes .*/worker_processes 1;/' \
      -e "s#\.\./certs/#$work/certs/#" "$PEERS/nginx/nginx.conf.in" >"$work/nginx/nginx.conf"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      nginx -p "$work/nginx/" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
      -g 'daemon off; master_process off;' >/dev/null 2>&1 &
  else
    PROXY_LISTEN=127.0.0.1:18410 TLS_CERT="$work/certs/server.crt" TLS_KEY="$work/certs/server.key" \
      valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$ROOT/target/release/stream-token-proxy" --config "$work/proxy.toml" >/dev/null 2>&1 &
  fi
  local proxy=$!
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/18410) 2>/dev/null && break; sleep 0.1; done
  sleep 1 # let the first JWKS fetch land
  local urls=()
  for _ in $(seq "$1"); do urls+=("https://127.0.0.1:18410$([ "$MODE" = token ] && echo /api/stream/token || echo /api/hello)"); done
  if [ "$MODE" = token ]; then
    curl -sk --http1.1 -X POST -H "Authorization: Bearer $token" "${urls[@]}" >/dev/null
  else
    curl -sk --http1.1 "${urls[@]}" >/dev/null
  fi
  kill -TERM "$proxy"; wait "$proxy" || true
  awk '/^summary:|^totals:/ {print $2; exit}' "$out"
}
small=$(instructions 200)
large=$(instructions 3200)
name=$MODE
if [ "$TARGET" = nginx ]; then name=$MODE-nginx; fi
mkdir -p "$ROOT/bench/results" && cp "$work/cg.3200" "$ROOT/bench/results/callgrind-$name.out"; cp "$work/cg.200" "$ROOT/bench/results/callgrind-$name-200.out"
echo "target=$TARGET mode=$MODE: $(( (large - small) / 3000 )) instructions per request (Ir 200: $small, Ir 3200: $large)"
echo "profile: callgrind_annotate bench/results/callgrind-$name.out"
