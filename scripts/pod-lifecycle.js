'use strict';
// The pod-lifecycle rehearsal's driver (scripts/pod-lifecycle.sh prepares the plan from the
// manifest and calls this). Node core only. Plays, with real processes:
//   - the kubelet: starts a pod's two containers together, runs their startup and readiness
//     probes as declared, and on deletion runs every container's preStop (sleep) at once,
//     sends each container SIGTERM when its own hook ends and SIGKILL when the grace period
//     (terminationGracePeriodSeconds, at least 2 s after the hook) is over;
//   - the endpoints controller and kube-proxy: a Ready pod and a deleted one change the set of
//     endpoints new connections go to, PROPAGATION seconds later; open connections stay;
//   - the Deployment controller: maxSurge 1, maxUnavailable 0 (a new pod is Ready before the
//     old one is deleted);
//   - the clients: steady HTTP/1.1 and HTTP/2 load (token route, forwarded GET and POST).
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const http2 = require('http2');
const https = require('https');
const net = require('net');
const path = require('path');
const { spawn, execFileSync } = require('child_process');

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}
const args = parseArgs(process.argv.slice(2));
const plan = JSON.parse(fs.readFileSync(args.plan, 'utf8'));
const WORK = args.work;
const OUT = args.out;
const env = process.env;
const ROUNDS = Number(env.ROUNDS || 20);
const PROPAGATION = Number(env.PROPAGATION || 2);
const STEADY = Number(env.STEADY || 3);
const NODE_START_DELAY = Number(env.NODE_START_DELAY || 5);
const NODE_SIGTERM = env.NODE_SIGTERM || 'drain';
const H1_CLIENTS = Number(env.H1_CLIENTS || 6);
const H2_CLIENTS = Number(env.H2_CLIENTS || 2);
const INTERVAL_MS = Number(env.INTERVAL_MS || 50);
const PORT_BASE = Number(env.PORT_BASE || 19200);
const GRACE = plan.terminationGracePeriodSeconds;
const UPSTREAM_JS = path.join(__dirname, '..', 'tests', 'upstream', 'server.js');

const t0 = Date.now();
const now = () => (Date.now() - t0) / 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const timeline = fs.createWriteStream(path.join(OUT, 'timeline.log'));
function log(msg) {
  const line = `[${now().toFixed(1).padStart(6)} s] ${msg}`;
  console.log(line);
  timeline.write(line + '\n');
}

// ---------- dev material shared by every pod ----------
execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
  '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  '-keyout', path.join(WORK, 'key.pem'), '-out', path.join(WORK, 'cert.pem')], { stdio: 'ignore' });
fs.chmodSync(path.join(WORK, 'key.pem'), 0o600);
const CA = fs.readFileSync(path.join(WORK, 'cert.pem'));
function proxyConfig(ports) {
  return `# pod-lifecycle rehearsal: the dev profile with the manifest's proxy.toml timings
dev = true
[server]
listen = "127.0.0.1:${ports.https}"
shutdown_grace = "${plan.proxy.shutdown_grace_text}"
[admin]
listen = "127.0.0.1:${ports.admin}"
[tls]
cert = "cert.pem"
key = "key.pem"
[upstream]
url = "http://127.0.0.1:${ports.node}"
pool_idle_timeout = "${plan.proxy.pool_idle_timeout}"
[auth]
dev_signing_key = "dev-signing-key.pem"
[stream]
api_secret_file = "dev-stream-secret"
[limits]
# One client address and one user here: the limits would measure the limiter.
token_per_ip = { requests = 1000000, period = "1m", burst = 100000 }
token_per_user = { requests = 1000000, period = "1m", burst = 100000 }
[log]
level = "warn"
`;
}
fs.writeFileSync(path.join(WORK, 'base.toml'), proxyConfig({ https: 0, admin: 0, node: 1 }));
const DEV_TOKEN = execFileSync(args.bin, ['--config', path.join(WORK, 'base.toml'), 'dev-token', '--sub', 'u'])
  .toString().trim();

// The manifest's ports (by name or number) -> this rehearsal's loopback ports for a pod.
const portOf = (hostPort) => Number(String(hostPort).split(':').pop().replace(/\/.*/, ''));
const MANIFEST_PORTS = {
  [portOf(plan.proxy.listen)]: 'https',
  [portOf(plan.proxy.admin)]: 'admin',
  [portOf(new URL(plan.proxy.upstream).host)]: 'node',
};
function localPort(pod, role, port) {
  const number = typeof port === 'number' ? port : plan.containers[role].ports[port];
  const which = MANIFEST_PORTS[number];
  if (!which) throw new Error(`probe port ${port} of ${role}: not a port this rehearsal runs`);
  return pod.ports[which];
}

// ---------- the kubelet's probes ----------
function runProbe(pod, role, p) {
  const timeout = p.timeoutSeconds * 1000;
  return new Promise((resolve) => {
    if (p.type === 'httpGet') {
      const req = http.get({ host: '127.0.0.1', port: localPort(pod, role, p.port), path: p.path, timeout },
        (res) => { res.resume(); resolve(res.statusCode >= 200 && res.statusCode < 400); });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(false));
    } else if (p.type === 'tcpSocket') {
      const s = net.connect(localPort(pod, role, p.port), '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.setTimeout(timeout, () => { s.destroy(); resolve(false); });
      s.on('error', () => resolve(false));
    } else {
      // exec: the command as written, with the container's environment (its ports mapped).
      const child = spawn(p.command[0], p.command.slice(1), { env: { ...process.env, ...pod.envOf(role) }, stdio: 'ignore' });
      const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
      child.on('exit', (code) => { clearTimeout(timer); resolve(code === 0); });
      child.on('error', () => { clearTimeout(timer); resolve(false); });
    }
  });
}
class ContainerProbes {
  constructor(pod, role) {
    const c = plan.containers[role];
    this.pod = pod;
    this.role = role;
    this.startup = c.startupProbe;
    this.readiness = c.readinessProbe;
    this.started = !this.startup;
    this.ready = !this.readiness;
    this.timers = [];
    if (this.startup) this.loop('startup');
    if (this.readiness) this.loop('readiness');
  }
  get isReady() { return this.started && this.ready; }
  loop(kind) {
    const p = this[kind];
    let successes = 0;
    let failures = 0;
    let timer = null;
    let busy = false;
    const tick = async () => {
      clearTimeout(timer);
      if (busy || this.stopped || this.pod.exited[this.role]) return;
      if (kind === 'startup' && this.started) return;
      const skip = (kind === 'readiness' && !this.started) || now() - this.pod.startedAt < p.initialDelaySeconds;
      if (!skip) {
        busy = true;
        const passed = await runProbe(this.pod, this.role, p);
        busy = false;
        if (this.stopped) return;
        if (passed) { successes++; failures = 0; } else { failures++; successes = 0; }
        if (kind === 'startup' && passed) {
          this.started = true;
          // The kubelet probes readiness at once when it sees the container started.
          if (this.readinessNow) this.readinessNow();
          return;
        }
        if (kind === 'startup' && failures >= p.failureThreshold) {
          log(`pod ${this.pod.i}: ${this.role} startup probe failed ${failures} times (the kubelet would restart it)`);
        }
        if (kind === 'readiness' && passed && successes >= p.successThreshold) this.ready = true;
        if (kind === 'readiness' && !passed && failures >= p.failureThreshold) this.ready = false;
      }
      timer = setTimeout(tick, p.periodSeconds * 1000);
      this.timers.push(timer);
    };
    if (kind === 'readiness') this.readinessNow = tick;
    tick(); // the probe worker probes at once, then every periodSeconds
  }
  stop() {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
  }
}

// ---------- a pod ----------
const pidsFile = args.pids;
class Pod {
  constructor(i) {
    this.i = i;
    this.ports = { https: PORT_BASE + 10 * i, admin: PORT_BASE + 10 * i + 1, node: PORT_BASE + 10 * i + 2 };
    this.procs = {};
    this.exited = {};
    this.sigterm = {};
    this.exitWaiters = [];
  }
  envOf(role) {
    const out = {};
    for (const [k, v] of Object.entries(plan.containers[role].env)) {
      const which = MANIFEST_PORTS[Number(v)];
      out[k] = which && /^\d+$/.test(v) ? String(this.ports[which]) : v;
    }
    return out;
  }
  start() {
    this.startedAt = now();
    const cfg = path.join(WORK, `pod-${this.i}.toml`);
    fs.writeFileSync(cfg, proxyConfig(this.ports));
    const logFd = fs.openSync(path.join(OUT, `pod-${this.i}.log`), 'a');
    const nodeEnv = { ...process.env, ...this.envOf('node'), PORT: String(this.ports.node) };
    if (NODE_START_DELAY > 0) nodeEnv.STARTUP_DELAY_MS = String(NODE_START_DELAY * 1000);
    if (NODE_SIGTERM === 'drain') nodeEnv.DRAIN_ON_SIGTERM_MS = '10000';
    this.procs.node = spawn('node', [UPSTREAM_JS], { env: nodeEnv, stdio: ['ignore', 'pipe', logFd] });
    this.procs.proxy = spawn(args.bin, ['--config', cfg], { stdio: ['ignore', logFd, logFd] });
    fs.closeSync(logFd);
    this.procs.node.stdout.on('data', (c) => {
      if (this.listeningAt === undefined && c.toString().includes('"port"')) this.listeningAt = now();
    });
    for (const [role, child] of Object.entries(this.procs)) {
      fs.appendFileSync(pidsFile, `${child.pid}\n`);
      child.on('exit', (code, signal) => {
        this.exited[role] = { at: now(), code, signal };
        for (const w of this.exitWaiters) w();
      });
    }
    this.probes = { node: new ContainerProbes(this, 'node'), proxy: new ContainerProbes(this, 'proxy') };
  }
  get ready() { return this.probes.node.isReady && this.probes.proxy.isReady; }
  async untilReady(limit = 90) {
    while (!this.ready) {
      if (now() - this.startedAt > limit) throw new Error(`pod ${this.i} not Ready within ${limit} s`);
      if (this.exited.node || this.exited.proxy) throw new Error(`pod ${this.i}: a container exited while starting`);
      await sleep(20);
    }
    this.readyAt = now();
  }
  // What a request's failure says about the pod that answered it, at that moment.
  phase() {
    if (this.deletedAt === undefined) {
      return this.listeningAt === undefined ? 'starting: Node not listening yet' : 'serving';
    }
    if (this.sigterm.node !== undefined) return 'terminating: Node got SIGTERM';
    if (this.sigterm.proxy !== undefined) return 'terminating: proxy draining';
    return 'terminating: preStop';
  }
  // The kubelet deleting the pod. Resolves when both containers have exited.
  terminate() {
    this.deletedAt = now();
    this.probes.node.stop();
    this.probes.proxy.stop();
    for (const role of ['proxy', 'node']) {
      const hook = Math.min(plan.containers[role].preStopSleep, GRACE);
      const kill = hook + Math.max(GRACE - hook, 2);
      setTimeout(() => this.signal(role, 'SIGTERM'), hook * 1000);
      setTimeout(() => this.signal(role, 'SIGKILL'), kill * 1000);
    }
    return this.exitedBoth();
  }
  signal(role, sig) {
    if (this.exited[role]) return;
    if (sig === 'SIGTERM') this.sigterm[role] = now();
    else log(`pod ${this.i}: ${role} SIGKILL (grace period over)`);
    this.procs[role].kill(sig);
  }
  exitedBoth() {
    return new Promise((resolve) => {
      const check = () => { if (this.exited.node && this.exited.proxy) resolve(); };
      this.exitWaiters.push(check);
      check();
    });
  }
  describe() {
    const rel = (t) => (t === undefined ? '-' : `+${(t - this.startedAt).toFixed(1)}`);
    const del = (t) => (t === undefined ? '-' : `+${(t - this.deletedAt).toFixed(1)}`);
    const ex = (r) => (this.exited[r] ? `${del(this.exited[r].at)} (${this.exited[r].signal || `exit ${this.exited[r].code}`})` : '-');
    return `pod ${this.i}: Node listening ${rel(this.listeningAt)} s, Ready ${rel(this.readyAt)} s after start; ` +
      (this.deletedAt === undefined ? 'not deleted' :
        `after deletion: proxy SIGTERM ${del(this.sigterm.proxy)} s, exited ${ex('proxy')}; ` +
        `Node SIGTERM ${del(this.sigterm.node)} s, exited ${ex('node')}`);
  }
}

// ---------- endpoints as the clients see them ----------
let endpoints = [];
let rr = 0;
const pickPod = () => (endpoints.length ? endpoints[rr++ % endpoints.length] : null);

// ---------- the load ----------
const records = [];
let loadRunning = false;
let currentRound = 0;
const KINDS = ['token', 'get', 'post'];
const POST_BODY = Buffer.from(JSON.stringify({ text: 'x'.repeat(1000) }));
function requestSpec(kind) {
  if (kind === 'token') {
    return { method: 'POST', path: '/api/stream/token', headers: { authorization: `Bearer ${DEV_TOKEN}`, 'content-length': '0' }, body: null };
  }
  if (kind === 'get') return { method: 'GET', path: '/api/hello', headers: {}, body: null };
  return { method: 'POST', path: '/api/messages', headers: { 'content-type': 'application/json', 'content-length': String(POST_BODY.length) }, body: POST_BODY };
}
function check(kind, status, body) {
  if (status !== 200) {
    let code = '';
    try { code = JSON.parse(body).error || ''; } catch (_) {}
    return `HTTP ${status}${code ? ` ${code}` : ''}`;
  }
  try {
    const v = JSON.parse(body);
    if (kind === 'token' && (v.user_id !== 'u' || !v.token)) return 'token answer without the token';
    if (kind === 'get' && v.message !== 'hello') return 'GET answer not from Node';
    if (kind === 'post' && v.bodyBytes !== POST_BODY.length) return 'POST body not forwarded whole';
  } catch (_) {
    return 'answer not JSON';
  }
  return null;
}
function record(kind, pod, proto, failure, retried) {
  records.push({ round: currentRound, kind, proto, pod: pod ? pod.i : null, failure, phase: failure && pod ? pod.phase() : null, retried });
}

class H1Client {
  constructor(id) { this.id = id; this.pod = null; this.agent = null; this.open = false; }
  target() {
    if (this.pod && this.open) return this.pod; // a kept-alive connection stays where it is
    if (this.agent) this.agent.destroy();
    this.pod = pickPod();
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    return this.pod;
  }
  request(pod, spec) {
    return new Promise((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1', port: pod.ports.https, servername: 'localhost', ca: CA, agent: this.agent,
        method: spec.method, path: spec.path, headers: spec.headers, timeout: 30000,
      }, (res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => resolve({ status: res.statusCode, body }));
        res.on('error', (e) => { e.answered = true; reject(e); });
        res.on('aborted', () => { const e = new Error('response aborted'); e.answered = true; reject(e); });
      });
      req.on('socket', (s) => {
        this.open = true;
        if (!s.tracked) {
          s.tracked = true;
          s.on('close', () => { if (this.socket === s) this.open = false; });
        }
        this.socket = s;
      });
      req.on('timeout', () => req.destroy(new Error('timeout (30 s)')));
      req.on('error', (e) => { e.reused = req.reusedSocket; reject(e); });
      req.end(spec.body);
    });
  }
  async send(kind, retried = null) {
    const pod = this.target();
    if (!pod) return record(kind, null, 'h1', 'no endpoint', retried);
    try {
      const r = await this.request(pod, requestSpec(kind));
      record(kind, pod, 'h1', check(kind, r.status, r.body), retried);
    } catch (e) {
      this.open = false;
      // Never processed: a kept-alive connection the server closed as this request went out.
      if (!retried && e.reused && !e.answered && ['ECONNRESET', 'EPIPE'].includes(e.code)) {
        return this.send(kind, `h1 ${e.code} on a reused keep-alive connection, nothing received, from a pod ${pod.phase()}`);
      }
      record(kind, pod, 'h1', e.code || e.message, retried);
    }
  }
  async loop() {
    for (let n = this.id; loadRunning; n++) {
      await this.send(KINDS[n % KINDS.length]);
      await sleep(INTERVAL_MS);
    }
    if (this.agent) this.agent.destroy();
  }
}

class H2Client {
  constructor(id) { this.id = id; this.session = null; this.pod = null; }
  target() {
    const s = this.session;
    if (s && !s.closed && !s.destroyed && !this.goaway) return this.pod;
    if (s) s.close();
    this.pod = pickPod();
    if (!this.pod) return null;
    const session = http2.connect(`https://localhost:${this.pod.ports.https}`, {
      host: '127.0.0.1', port: this.pod.ports.https, servername: 'localhost', ca: CA,
    });
    this.goaway = false;
    session.on('goaway', () => { if (this.session === session) this.goaway = true; });
    session.on('error', () => {});
    this.session = session;
    return this.pod;
  }
  request(spec) {
    return new Promise((resolve, reject) => {
      const headers = { ':method': spec.method, ':path': spec.path, ...spec.headers };
      let stream;
      try {
        stream = this.session.request(headers, { endStream: !spec.body });
      } catch (e) {
        e.notSent = true; // the session was already closing: nothing went out
        return reject(e);
      }
      let status = 0;
      let body = '';
      stream.setTimeout(30000, () => stream.close(http2.constants.NGHTTP2_CANCEL));
      stream.on('response', (h) => { status = h[':status']; });
      stream.on('data', (c) => { body += c; });
      stream.on('end', () => resolve({ status, body }));
      stream.on('error', (e) => {
        e.refused = !status && stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM;
        reject(e);
      });
      stream.on('close', () => {
        if (!status) {
          const e = new Error(`h2 stream closed (${stream.rstCode}) without an answer`);
          e.refused = stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM;
          reject(e);
        }
      });
      if (spec.body) stream.end(spec.body);
    });
  }
  async send(kind, retried = null, attempts = 0) {
    const pod = this.target();
    if (!pod) return record(kind, null, 'h2', 'no endpoint', retried);
    try {
      const r = await this.request(requestSpec(kind));
      record(kind, pod, 'h2', check(kind, r.status, r.body), retried);
    } catch (e) {
      if (e.notSent && attempts < 3) { this.goaway = true; return this.send(kind, retried, attempts + 1); }
      if (!retried && e.refused) {
        this.goaway = true;
        return this.send(kind, `h2 stream refused (GOAWAY), never processed, from a pod ${pod.phase()}`);
      }
      record(kind, pod, 'h2', e.code || e.message, retried);
    }
  }
  async loop() {
    for (let n = this.id; loadRunning; n++) {
      await this.send(KINDS[n % KINDS.length]);
      await sleep(INTERVAL_MS);
    }
    if (this.session) this.session.close();
  }
}

// ---------- the rehearsal ----------
const pods = [];
function killAll() {
  for (const pod of pods) for (const [role, child] of Object.entries(pod.procs)) if (!pod.exited[role]) child.kill('SIGKILL');
}
process.on('SIGINT', () => { killAll(); process.exit(130); });
process.on('SIGTERM', () => { killAll(); process.exit(143); });

async function main() {
  const c = plan.containers;
  log(`manifest ${plan.manifest}: terminationGracePeriodSeconds ${GRACE}; preStop sleep: proxy ${c.proxy.preStopSleep} s, ` +
    `Node ${c.node.preStopSleep} s; Node readiness probe: ${c.node.readinessProbe ? c.node.readinessProbe.type : 'none'}; ` +
    `proxy shutdown_grace ${plan.proxy.shutdown_grace_text}`);
  log(`rounds ${ROUNDS}, propagation ${PROPAGATION} s, steady ${STEADY} s, Node start-up ${NODE_START_DELAY} s, ` +
    `Node on SIGTERM: ${NODE_SIGTERM}, load: ${H1_CLIENTS} HTTP/1.1 + ${H2_CLIENTS} HTTP/2 clients, one request each per ${INTERVAL_MS} ms`);
  const clients = [
    ...Array.from({ length: H1_CLIENTS }, (_, i) => new H1Client(i)),
    ...Array.from({ length: H2_CLIENTS }, (_, i) => new H2Client(i)),
  ];
  // Start-up: both containers at once; load once the pod is Ready and its endpoint has spread.
  let current = new Pod(0);
  pods.push(current);
  current.start();
  await current.untilReady();
  log(`pod 0 Ready (start-up rehearsal); in the endpoints in ${PROPAGATION} s, then the load starts`);
  await sleep(PROPAGATION * 1000);
  endpoints = [current];
  loadRunning = true;
  const loops = clients.map((cl) => cl.loop());
  await sleep(STEADY * 1000);
  const terminations = [];
  for (let r = 1; r <= ROUNDS; r++) {
    currentRound = r;
    const next = new Pod(r);
    pods.push(next);
    next.start();
    await next.untilReady();
    const old = current;
    current = next;
    terminations.push(old.terminate().then(() => log(old.describe())));
    log(`round ${r}: pod ${r} Ready; pod ${old.i} deleted; endpoints switch in ${PROPAGATION} s`);
    setTimeout(() => { endpoints = [next]; }, PROPAGATION * 1000);
    await sleep((PROPAGATION + STEADY) * 1000);
  }
  log('all restarts done; waiting for the deleted pods to exit');
  await Promise.all(terminations);
  await sleep(1000);
  loadRunning = false;
  await Promise.race([Promise.all(loops), sleep(35000)]);
  current.procs.proxy.kill('SIGTERM');
  current.procs.node.kill('SIGTERM');
  await Promise.race([current.exitedBoth(), sleep(GRACE * 1000)]);
  killAll();
  return report();
}

function report() {
  const byRound = new Map();
  for (const rec of records) {
    if (!byRound.has(rec.round)) byRound.set(rec.round, []);
    byRound.get(rec.round).push(rec);
  }
  // "<failure>, <phase of the pod that answered>" -> count, with the kinds and protocols.
  const how = (recs) => {
    const m = new Map();
    for (const rec of recs) {
      const key = `${rec.failure}, pod ${rec.phase || '-'}`;
      if (!m.has(key)) m.set(key, { n: 0, what: {} });
      const e = m.get(key);
      e.n++;
      const what = `${rec.kind}/${rec.proto}`;
      e.what[what] = (e.what[what] || 0) + 1;
    }
    return [...m.entries()].sort((a, b) => b[1].n - a[1].n)
      .map(([k, e]) => [`${k} (${Object.entries(e.what).map(([w, n]) => `${w} ${n}`).join(', ')})`, e.n]);
  };
  const failedOf = (recs) => recs.filter((r) => r.failure);
  const retriedOf = (recs) => recs.filter((r) => r.retried);
  const lines = [];
  lines.push(`| round | sent | failed | retried (never processed) | how they failed |`);
  lines.push(`| ---: | ---: | ---: | ---: | --- |`);
  for (const [round, recs] of byRound) {
    const failed = failedOf(recs);
    const summary = how(failed).map(([k, v]) => `${v}× ${k}`).join('; ');
    const label = round === 0 ? '0 (start-up)' : round === ROUNDS ? `${round} (and the wait for the deleted pods)` : round;
    lines.push(`| ${label} | ${recs.length} | ${failed.length} | ${retriedOf(recs).length} | ${summary} |`);
  }
  const failed = failedOf(records);
  const retried = retriedOf(records);
  const reasons = new Map();
  for (const r of retried) reasons.set(r.retried, (reasons.get(r.retried) || 0) + 1);
  const kinds = {};
  for (const r of records) kinds[r.kind] = (kinds[r.kind] || 0) + 1;
  const phaseTotals = new Map();
  const failedKinds = {};
  for (const r of failed) {
    phaseTotals.set(r.phase || 'no pod', (phaseTotals.get(r.phase || 'no pod') || 0) + 1);
    failedKinds[r.kind] = (failedKinds[r.kind] || 0) + 1;
  }
  const summary = [
    `${args.label} manifest: ${ROUNDS} rolling restarts after a start-up; ${records.length} requests sent ` +
      `(${Object.entries(kinds).map(([k, v]) => `${k} ${v}`).join(', ')}), ${failed.length} failed, ` +
      `${retried.length} retried once by the client (never processed${reasons.size ? ': ' + [...reasons].map(([k, v]) => `${v}× ${k}`).join('; ') : ''}).`,
    failed.length ? `Failed by kind: ${Object.entries(failedKinds).map(([k, v]) => `${k} ${v}`).join(', ')}; ` +
      `by the phase of the pod that answered: ${[...phaseTotals].map(([k, v]) => `${k} ${v}`).join(', ')}.` : '',
    failed.length ? `How they failed: ${how(failed).map(([k, v]) => `${v}× ${k}`).join('; ')}.` : '',
  ].filter(Boolean);
  const killed = pods.filter((p) => p !== pods[pods.length - 1] && (
    (p.exited.node && p.exited.node.signal === 'SIGKILL') || (p.exited.proxy && p.exited.proxy.signal === 'SIGKILL')));
  if (killed.length) summary.push(`SIGKILLed at the end of the grace period: pods ${killed.map((p) => p.i).join(', ')}.`);
  const md = [...summary, '', ...lines].join('\n');
  fs.writeFileSync(path.join(OUT, 'report.md'), md + '\n');
  fs.writeFileSync(path.join(OUT, 'records.json'), JSON.stringify(records));
  console.log('\n' + md);
  console.log(`\ntimeline: ${path.join(OUT, 'timeline.log')}; per-pod logs: ${OUT}/pod-N.log`);
  return failed.length === 0;
}

main().then((ok) => process.exit(ok ? 0 : 1), (e) => {
  console.error(e);
  killAll();
  process.exit(2);
});
