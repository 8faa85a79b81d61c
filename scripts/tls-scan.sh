#!/usr/bin/env bash
# TLS scan of the proxy's public listener (issue 7, security verification).
#
# Builds the release binary, starts it on a loopback port with a throw-away dev config (admin
# listener off, dev certificate generated into a temp dir), scans it with sslscan and
# testssl.sh, checks ALPN with openssl s_client, stops it by its PID and FAILS when:
#   - anything older than TLS 1.2 (SSLv2, SSLv3, TLS 1.0, TLS 1.1) is accepted,
#   - any accepted cipher suite is not forward secret (TLS 1.3 suites and (EC)DHE only),
#   - ALPN does not offer both h2 and http/1.1.
# Raw outputs go to bench/results/tls-scan-<UTC time>/ (git-ignored); the summary is printed
# and saved there as summary.txt. Loopback only.
#
#   scripts/tls-scan.sh            # TLS_SCAN_PORT=N to pick the port
set -euo pipefail
cd "$(dirname "$0")/.."

results="bench/results/tls-scan-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$results"

# ---- tools (Debian packages) ----
missing=()
command -v sslscan >/dev/null || missing+=(sslscan)
command -v testssl >/dev/null || missing+=(testssl.sh)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- the proxy ----
cargo build --release --locked --quiet
bin="$PWD/target/release/stream-token-proxy"
port="${TLS_SCAN_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
target="127.0.0.1:$port"
work="$(mktemp -d)"
cat >"$work/proxy.toml" <<EOF
# tls-scan.sh: dev profile (generated certificate), loopback, no admin listener.
dev = true
[server]
listen = "$target"
shutdown_grace = "1s"
[tls]
cert = "cert.pem"
key = "key.pem"
[admin]
enabled = false
[upstream]
url = "http://127.0.0.1:9"
[auth]
dev_signing_key = "dev-signing-key.pem"
[stream]
api_key = "tls-scan"
EOF
# A throw-away Stream secret: no token is minted during a scan.
STREAM_API_SECRET="tls-scan-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" \
  "$bin" --config "$work/proxy.toml" >"$results/proxy.log" 2>&1 &
pid=$!
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT

for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the proxy did not start:" >&2
    cat "$results/proxy.log" >&2
    exit 1
  fi
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "nothing listens on $target" >&2; exit 1; }
echo "proxy pid $pid on $target; results in $results"

# ---- scans ----
sslscan --no-colour --show-sigs "$target" >"$results/sslscan.txt" 2>&1 || true
# testssl.sh exits non-zero for findings of its own rating; the JSON is what is judged.
timeout 900 testssl --quiet --color 0 --warnings batch --ip one --sneaky \
  --protocols --each-cipher --fs --server-preference --std \
  --jsonfile "$results/testssl.json" "$target" >"$results/testssl.txt" 2>&1 || true
for alpn in h2 http/1.1; do
  echo "== -alpn $alpn" >>"$results/openssl-alpn.txt"
  timeout 20 openssl s_client -connect "$target" -servername localhost -alpn "$alpn" \
    </dev/null >>"$results/openssl-alpn.txt" 2>&1 || true
done

# ---- verdict ----
python3 - "$results" <<'PY'
import json, re, sys
results = sys.argv[1]
failures, lines = [], []

# sslscan: protocol table and accepted suites.
text = open(f"{results}/sslscan.txt", errors="replace").read()
protocols = dict(re.findall(r"^(SSLv2|SSLv3|TLSv1\.[0-3])\s+(enabled|disabled)", text, re.M))
suites = re.findall(r"^(?:Preferred|Accepted)\s+(\S+)\s+\d+ bits\s+(\S+)", text, re.M)
if not protocols or not suites:
    failures.append("sslscan: no protocol table or no accepted suite in sslscan.txt")
weak = [p for p in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1") if protocols.get(p) == "enabled"]
if weak:
    failures.append(f"sslscan: accepted {', '.join(weak)}")
not_fs = [f"{v} {s}" for v, s in suites if not re.match(r"TLS_|ECDHE-|DHE-", s)]
if not_fs:
    failures.append(f"sslscan: suites without forward secrecy: {', '.join(not_fs)}")
lines.append("sslscan protocols: " + ", ".join(f"{p} {s}" for p, s in protocols.items()))
lines.append("sslscan accepted suites:")
lines += [f"  {v:8} {s}" for v, s in suites]

# testssl.sh: protocols, cipher categories, forward secrecy, ALPN.
try:
    data = json.load(open(f"{results}/testssl.json"))
    findings = data if isinstance(data, list) else data.get("scanResult", [])
    by_id = {}
    for f in findings:
        by_id.setdefault(f.get("id"), []).append(f)
except (OSError, ValueError) as e:
    by_id = {}
    failures.append(f"testssl: no JSON ({e})")

def finding(id_):
    return " | ".join(f.get("finding", "") for f in by_id.get(id_, []))

if by_id:
    for p in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        if "not offered" not in finding(p):
            failures.append(f"testssl: {p}: {finding(p) or 'no finding'}")
    for p in ("TLS1_2", "TLS1_3"):
        lines.append(f"testssl {p}: {finding(p)}")
    offered_ciphers = [f for f in sum(by_id.values(), []) if re.match(r"cipher-tls1_[23]_x|cipher_x", f.get("id", ""))]
    for f in offered_ciphers:
        # e.g. "TLSv1.2   xc02f   ECDHE-RSA-AES128-GCM-SHA256   ECDH 253   AESGCM   128   TLS_ECDHE_RSA_..."
        kx = f.get("finding", "")
        if not re.search(r"\b(ECDH|DH)\b", kx):
            failures.append(f"testssl: suite without (EC)DHE key exchange: {kx}")
    for cat in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_OBSOLETED",
                "cipherlist_STRONG_NOFS"):
        if cat in by_id and "not offered" not in finding(cat):
            failures.append(f"testssl: {cat}: {finding(cat)}")
    lines.append(f"testssl forward secrecy (FS): {finding('FS') or finding('PFS')}")
    lines.append(f"testssl FS key exchange groups: {finding('FS_ECDHE_curves') or finding('PFS_ECDHE_curves')}")
    # testssl reports h2 on its own line (ALPN_HTTP2) and the other protocols under ALPN.
    alpn = " ".join(x for x in (finding("ALPN_HTTP2"), finding("ALPN")) if x).replace(",", " ")
    lines.append(f"testssl ALPN: {alpn}")
    if "NOT a cipher order" in finding("cipher_order"):
        lines.append("testssl cipher order: the client picks (every offered suite is AEAD with ECDHE)")
    for proto in ("h2", "http/1.1"):
        if proto not in alpn.split():
            failures.append(f"testssl: ALPN does not offer {proto}: {alpn!r}")
    lines.append(f"testssl each-cipher rows: {len(offered_ciphers)}")

# openssl s_client: the server picks each protocol when it is the only one offered.
alpn_text = open(f"{results}/openssl-alpn.txt", errors="replace").read()
for proto in ("h2", "http/1.1"):
    if f"ALPN protocol: {proto}" not in alpn_text:
        failures.append(f"openssl: ALPN {proto} not selected")
    else:
        lines.append(f"openssl s_client -alpn {proto}: selected")

lines.append("")
if failures:
    lines.append("TLS SCAN FAILED:")
    lines += [f"  - {f}" for f in failures]
else:
    lines.append("TLS SCAN PASSED: TLS 1.2 and 1.3 only, forward-secret suites only, ALPN h2 and http/1.1")
summary = "\n".join(lines)
print(summary)
open(f"{results}/summary.txt", "w").write(summary + "\n")
sys.exit(1 if failures else 0)
PY
