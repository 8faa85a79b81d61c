#!/usr/bin/env bash
# Memory under hostile clients (issue 14), beside bench/memory.sh: the release binary behind
# the Node test upstream, measured from /proc/<pid>/status while
#   - HTTP/2 clients grant the largest window (2^31-1) and never read, each asking for
#     HOSTILE_H2_STREAMS (128) 1 MB downloads on HOSTILE_H2_CONNS (8) connections;
#   - HOSTILE_H1_CONNS (256) HTTP/1.1 clients ask for a 1 MB download and never read.
# The loads are the ones in tests/resource_bounds.rs, run from its release build.
#   bench/hostile-memory.sh                 this checkout
#   BEFORE=c2fd397 bench/hostile-memory.sh  also an older commit's binary (built in a temporary
#                                           worktree), measured by the same tests
#   BEFORE_BIN=path bench/hostile-memory.sh an older binary already built
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo build --release --locked -q
run() { # $1 = label, $2 = binary
  echo "== $1"
  STP_BIN="$2" HOSTILE_REPORT_ONLY=1 cargo test --release --locked -q --test resource_bounds \
    never_read -- --nocapture --test-threads=1 2>&1 | grep 'never reading'
}
if [ -n "${BEFORE_BIN:-}" ]; then
  run "before ($BEFORE_BIN)" "$BEFORE_BIN"
elif [ -n "${BEFORE:-}" ]; then
  old=$(mktemp -d)
  trap 'git worktree remove --force "$old" >/dev/null 2>&1 || true' EXIT
  git worktree add --detach "$old" "$BEFORE" >/dev/null
  (cd "$old" && cargo build --release --locked -q)
  run "before ($BEFORE)" "$old/target/release/stream-token-proxy"
fi
run "after ($(git rev-parse --short HEAD))" "$ROOT/target/release/stream-token-proxy"
