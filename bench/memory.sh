#!/usr/bin/env bash
# Memory while streaming: starts the Node upstream (tests/upstream/server.js) and the release
# proxy, warms it up, records peak RSS (VmHWM), then streams a 1 GiB download and a 1 GiB upload
# through it (curl, checking the sha256 Node reports for the upload) and records VmHWM again.
# Target (issue 6): streaming 1 GiB adds <= 8 MiB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE=${SIZE:-1073741824}
cd "$ROOT" && cargo build --release --locked -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# The test upstream exits when its stdin closes: this script holds the FIFO's write end (fd 7)
# until it exits, so Node never outlives it and no helper process is left behind.
mkfifo "$work/upstream.stdin"
PORT=18422 node tests/upstream/server.js <"$work/upstream.stdin" >"$work/upstream.log" &
pids+=($!)
exec 7>"$work/upstream.stdin"
cat >"$work/proxy.toml" <<TOML
dev = true
[server]
listen = "127.0.0.1:18420"
[admin]
listen = "127.0.0.1:0"
[tls]
cert = "cert.pem"
key = "key.pem"
[upstream]
url = "http://127.0.0.1:18422"
response_timeout = "120s"
[auth]
dev_signing_key = "dev-signing-key.pem"
[stream]
api_secret_file = "dev-stream-secret"
[log]
level = "warn"
TOML
"$ROOT/target/release/stream-token-proxy" --config "$work/proxy.toml" &
proxy=$!
pids+=($proxy)
for _ in $(seq 100); do curl -skf https://127.0.0.1:18420/api/hello >/dev/null 2>&1 && break; sleep 0.1; done
hwm() { awk '/VmHWM/ {print $2}' "/proc/$proxy/status"; }
for _ in $(seq 200); do curl -sk https://127.0.0.1:18420/api/hello >/dev/null; done
before=$(hwm)
echo "peak RSS after warm-up: $before KiB"
curl -sk "https://127.0.0.1:18420/_t/download?bytes=$SIZE" -o /dev/null -w "download: %{size_download} bytes in %{time_total}s\n"
after_down=$(hwm)
head -c "$SIZE" /dev/zero | curl -sk -X POST -T - -H 'content-type: application/octet-stream' \
  https://127.0.0.1:18420/_t/upload -w "\nupload: %{size_upload} bytes in %{time_total}s\n"
expected=$(head -c "$SIZE" /dev/zero | sha256sum | cut -d' ' -f1)
echo "expected sha256 of the upload: $expected"
after_up=$(hwm)
echo "peak RSS: warm-up $before KiB, after 1 GiB down $after_down KiB, after 1 GiB up $after_up KiB"
echo "streaming added $(awk -v k=$((after_up - before)) 'BEGIN { printf "%.1f", k / 1024 }') MiB (target <= 8 MiB)"
