#!/usr/bin/env bash
# The HTTP/2 pass-through row: ../shared/peers/tools/h2-compare.sh (h2load, 32 connections x 10
# streams, GET /api/hello) against the peers' nginx with `http2` and against this proxy on
# bench/proxy.toml, both in front of the same Node upstream. Prints one line per round and
# target: req/s, CPU us/request of the target and of Node behind it.
#   bench/h2.sh                  ROUNDS=3 DURATION=10 (h2-compare.sh's knobs pass through)
# Needs the peers' setup (`SETUP_ONLY=1 ../shared/peers/bench.sh`: certs, nginx) and h2load
# (Debian: nghttp2-client).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
cd "$ROOT"
cargo build --release --locked -q
BIN="$ROOT/target/release/stream-token-proxy"
# h2-compare.sh gives the target PROXY_HOST/PROXY_PORT, UPSTREAM_URL and the TLS pair; the
# rest of what the proxy needs to start (no JWKS is fetched for a pass-through).
export PROXY_CMD="cd $ROOT && CLERK_ISSUER=https://clerk.example.test \
CLERK_JWKS_URL=http://127.0.0.1:18401/.well-known/jwks.json \
STREAM_API_SECRET=bench-stream-api-secret-not-for-production \
PROXY_LISTEN=\$PROXY_HOST:\$PROXY_PORT exec $BIN --config $ROOT/bench/proxy.toml"
exec "$PEERS/tools/h2-compare.sh"
