#!/usr/bin/env bash
# Pod-lifecycle rehearsal (issue 20): plays rolling restarts of the chat-backend pod the way the
# kubelet and the endpoints controller do them, with the processes of a real pod (the test Node
# upstream and the release proxy), under steady load, and counts the requests that fail.
#
# Everything the kubelet would act on is read from the manifest (deploy/kubernetes/
# deployment.yaml: preStop sleeps, probes, terminationGracePeriodSeconds, the Node container's
# env) and from the proxy config next to it (server.shutdown_grace, upstream.pool_idle_timeout);
# scripts/pod-lifecycle.js does the rest:
#   1. start-up: pod 0's two processes start together; the kubelet's probes are run as the
#      manifest declares them (startup, then readiness; exec probes run their command); load
#      starts when the pod is Ready and PROPAGATION has passed (the endpoint reaching clients);
#   2. ROUNDS rolling restarts (maxSurge 1, maxUnavailable 0): a new pod starts; once Ready, the
#      old pod is deleted: its endpoint leaves the clients' choice PROPAGATION later (connections
#      already open stay where they are, as with kube-proxy's conntrack), every container's
#      preStop runs, each gets SIGTERM when its own hook ends, SIGKILL at the grace period;
#      the next restart follows STEADY seconds after the switch;
#   3. the report: requests sent, failed and how (status or error, and which phase of which pod
#      answered), per round and in total. Exit status 1 if any request failed.
#
# The load: H1_CLIENTS HTTP/1.1 keep-alive clients and H2_CLIENTS HTTP/2 clients, each sending one
# request every INTERVAL_MS (token route with a dev token, forwarded GET, forwarded POST). Like
# browsers and mobile HTTP stacks, a client sends a request again, once, on a fresh connection
# when it was never processed: an HTTP/1.1 keep-alive connection the server closed as the
# request went out (nothing received) or an HTTP/2 stream refused by GOAWAY. Those are counted
# and listed as "retried", not as failures.
#
# Usage: scripts/pod-lifecycle.sh                     # the manifest in the working tree
#        MANIFEST=today scripts/pod-lifecycle.sh      # the manifest as of TODAY_REV (before issue 20)
#        MANIFEST=path/to/deployment.yaml PROXY_TOML=path/to/proxy.toml scripts/pod-lifecycle.sh
# Env: ROUNDS (20), PROPAGATION (2 s), STEADY (3 s), NODE_START_DELAY (5 s: the Node app's own
#      start-up before it listens), NODE_SIGTERM (drain: the app's handler drains, 10 s at most;
#      exit: Node's default, dies at once), H1_CLIENTS (6), H2_CLIENTS (2), INTERVAL_MS (50),
#      PORT_BASE (19200; pod i uses PORT_BASE+10i .. +2), TODAY_REV (e300dc0), OUT (report dir,
#      default bench/results/pod-lifecycle-<manifest>-<date>).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MANIFEST=${MANIFEST:-fixed}
TODAY_REV=${TODAY_REV:-e300dc0}
work=$(mktemp -d)
pids_file="$work/pids"
: >"$pids_file"
cleanup() {
  # The driver stops its pods itself; this is for a driver that died (every PID it started is
  # in $pids_file). By PID only.
  while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$pids_file"
  rm -rf "$work"
}
trap cleanup EXIT

case "$MANIFEST" in
  fixed)
    manifest=deploy/kubernetes/deployment.yaml
    proxy_toml=${PROXY_TOML:-deploy/kubernetes/proxy.toml}
    ;;
  today)
    git show "$TODAY_REV:deploy/kubernetes/deployment.yaml" >"$work/deployment.yaml"
    git show "$TODAY_REV:deploy/kubernetes/proxy.toml" >"$work/proxy.toml"
    manifest="$work/deployment.yaml"
    proxy_toml=${PROXY_TOML:-$work/proxy.toml}
    ;;
  *)
    manifest=$MANIFEST
    proxy_toml=${PROXY_TOML:-deploy/kubernetes/proxy.toml}
    ;;
esac
label=$MANIFEST
[ "$label" = fixed ] || [ "$label" = today ] || label=custom
OUT=${OUT:-$ROOT/bench/results/pod-lifecycle-$label-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q
BIN="$ROOT/target/release/stream-token-proxy"

# PyYAML: the system's, else the one deploy/validate.sh installs into deploy/.venv.
py=python3
python3 -c 'import yaml' 2>/dev/null || py=deploy/.venv/bin/python
"$py" - "$manifest" "$proxy_toml" >"$work/plan.json" <<'PY'
import json, sys, tomllib, yaml

manifest, proxy_toml = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(manifest)) if d]
deployment = next(d for d in docs if d.get("kind") == "Deployment")
spec = deployment["spec"]["template"]["spec"]
for c in spec.get("initContainers", []):
    if c.get("restartPolicy") == "Always":
        sys.exit(f"native sidecar {c['name']!r}: this rehearsal models two plain containers only")

def probe(p):
    if not p:
        return None
    out = {k: p.get(k, d) for k, d in [("initialDelaySeconds", 0), ("periodSeconds", 10),
           ("timeoutSeconds", 1), ("successThreshold", 1), ("failureThreshold", 3)]}
    if "httpGet" in p:
        out.update(type="httpGet", port=p["httpGet"]["port"], path=p["httpGet"].get("path", "/"))
    elif "tcpSocket" in p:
        out.update(type="tcpSocket", port=p["tcpSocket"]["port"])
    elif "exec" in p:
        out.update(type="exec", command=p["exec"]["command"])
    else:
        sys.exit(f"probe kind not modelled: {p}")
    return out

containers = {}
for c in spec["containers"]:
    role = "proxy" if c["name"] == "stream-token-proxy" else "node"
    pre = (c.get("lifecycle") or {}).get("preStop")
    if pre and "sleep" not in pre:
        sys.exit(f"{c['name']}: only preStop.sleep is modelled")
    containers[role] = {
        "name": c["name"],
        "preStopSleep": pre["sleep"]["seconds"] if pre else 0,
        "ports": {p.get("name", str(p["containerPort"])): p["containerPort"] for p in c.get("ports", [])},
        "env": {e["name"]: e["value"] for e in c.get("env", []) if "value" in e},
        "startupProbe": probe(c.get("startupProbe")),
        "readinessProbe": probe(c.get("readinessProbe")),
    }
assert set(containers) == {"proxy", "node"}, containers.keys()

def seconds(text):
    text = str(text)
    for unit, f in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "").isdigit():
            return float(text[: -len(unit)]) * f
    raise SystemExit(f"duration not understood: {text}")

config = tomllib.load(open(proxy_toml, "rb"))
print(json.dumps({
    "manifest": manifest,
    "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds", 30),
    "containers": containers,
    "proxy": {
        "listen": config["server"]["listen"],
        "admin": config.get("admin", {}).get("listen", "127.0.0.1:9090"),
        "upstream": config["upstream"]["url"],
        "shutdown_grace": seconds(config["server"].get("shutdown_grace", "25s")),
        "shutdown_grace_text": config["server"].get("shutdown_grace", "25s"),
        "pool_idle_timeout": config["upstream"].get("pool_idle_timeout", "4s"),
    },
}, indent=1))
PY

echo "== $MANIFEST manifest ($manifest, $proxy_toml); report in $OUT"
status=0
node scripts/pod-lifecycle.js --plan "$work/plan.json" --work "$work" --bin "$BIN" \
  --out "$OUT" --pids "$pids_file" --label "$MANIFEST" || status=$?
exit $status
