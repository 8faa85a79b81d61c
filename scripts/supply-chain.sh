#!/usr/bin/env bash
# Supply-chain checks (issue 7, security verification).
#
#   1. cargo deny check licenses bans sources   (deny.toml; offline: the lockfile and the
#      crates already in the cargo cache)
#   2. no OpenSSL, platform TLS or second crypto provider in the build graph (cargo tree)
#   3. cargo deny check advisories               (RustSec advisory DB, fetched from GitHub)
#
# Steps 1 and 2 fail the script on any finding. Step 3 runs when the advisory DB can be
# fetched, or from a copy already on this machine; when neither is possible (no route to
# GitHub, as on the development machines) it says SKIPPED and does not fail the script.
#
#   scripts/supply-chain.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null; then
  echo "== installing cargo-deny (cargo install --locked cargo-deny)"
  cargo install --locked cargo-deny || exit 1
fi
echo "cargo-deny $(cargo deny --version | awk '{print $2}')"
status=0

echo
echo "== 1. cargo deny check licenses bans sources"
if cargo deny --offline --locked --log-level warn check licenses bans sources; then
  echo "RESULT licenses bans sources: ok"
else
  echo "RESULT licenses bans sources: FAILED"
  status=1
fi

echo
echo "== 2. TLS and crypto crates in the build graph (all targets, normal + build + dev)"
for crate in openssl openssl-sys native-tls hyper-tls boring boring-sys ring; do
  out=$(cargo tree --locked --target all -e normal,build,dev -i "$crate" 2>&1)
  if grep -q "^$crate v" <<<"$out"; then
    echo "FOUND $crate:"
    echo "$out" | sed 's/^/    /'
    status=1
  else
    echo "absent: $crate"
  fi
done
echo "feature lines naming openssl / native-tls / ring (cargo tree -e features):"
cargo tree --locked -e features 2>/dev/null | grep -i -E "openssl|native-tls|ring" | sed 's/^[^a-zA-Z]*/    /' | sort -u
echo "TLS stack: $(cargo tree --locked -e normal --depth 1 2>/dev/null | grep -o -E '(rustls|tokio-rustls|hyper-rustls|aws-lc-rs) v[0-9.]+' | sort -u | tr '\n' ' ')"

echo
echo "== 3. cargo deny check advisories"
db_home="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if timeout 20 git ls-remote --quiet https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  if cargo deny --locked --log-level warn check advisories; then
    echo "RESULT advisories: ok (advisory DB fetched now)"
  else
    echo "RESULT advisories: FAILED"
    status=1
  fi
elif [ -n "$(ls -A "$db_home" 2>/dev/null)" ]; then
  echo "github.com is not reachable; using the advisory DB already in $db_home"
  if cargo deny --offline --locked --log-level warn check advisories; then
    echo "RESULT advisories: ok (local DB, possibly stale)"
  else
    echo "RESULT advisories: FAILED"
    status=1
  fi
else
  echo "RESULT advisories: SKIPPED: the RustSec advisory DB (github.com/rustsec/advisory-db)"
  echo "  cannot be fetched from this network and no copy is in $db_home."
  echo "  Run this script where GitHub is reachable (or copy a checkout of the DB there)."
  skipped=1
fi

echo
if [ "$status" -ne 0 ]; then
  echo "SUPPLY CHAIN: FAILED"
elif [ "${skipped:-0}" = 1 ]; then
  echo "SUPPLY CHAIN: PARTIAL (licenses, bans, sources passed; advisories SKIPPED, see above)"
else
  echo "SUPPLY CHAIN: PASSED"
fi
exit "$status"
