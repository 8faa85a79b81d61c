'use strict';
// The soak's traffic, signals and measurements (bench/soak.sh starts the processes and calls
// this). Node core only.
//
//   node bench/soak.js --rotate-only WORK       writes the first certificate (rotation 0)
//   node bench/soak.js --work W --out O --pid P --port N --admin M --duration 30m ...
//
// Every load loop counts what it expected (`ok`), what is expected to go wrong (the slowloris
// clients being cut off) and everything else (`errors`, with the first 200 written to
// OUT/errors.log). Once every --sample-every the proxy's RSS, fds and open connections are
// recorded with the counts of that interval; at the end: OUT/soak.md, OUT/soak.svg,
// OUT/samples.json.
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const http2 = require('http2');
const https = require('https');
const net = require('net');
const path = require('path');
const tls = require('tls');
const { execFileSync } = require('child_process');

// ---------- arguments ----------
function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) out[a.slice(2)] = true;
    else out[a.slice(2)] = argv[++i];
  }
  return out;
}
function seconds(text) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(String(text));
  if (!m) throw new Error(`not a duration: ${text}`);
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] || 's'];
  return Number(m[1]) * unit;
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const args = parseArgs(process.argv.slice(2));

// ---------- certificates, in the layout of a Kubernetes Secret volume ----------
// tls/tls.crt -> ..data/tls.crt, tls/..data -> ..<timestamp>; a rotation writes a new directory
// and renames a new ..data symlink over the old one (atomic), then removes the old directory.
function rotate(work, n) {
  const tlsDir = path.join(work, 'tls');
  const name = `..${new Date().toISOString().replace(/[-:.]/g, '')}_${n}`;
  const dir = path.join(tlsDir, name);
  fs.mkdirSync(dir);
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', `/CN=localhost rotation ${n}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-addext', 'basicConstraints=critical,CA:FALSE',
    '-CA', path.join(work, 'ca.crt'), '-CAkey', path.join(work, 'ca.key'),
    '-keyout', path.join(dir, 'tls.key'), '-out', path.join(dir, 'tls.crt'),
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  fs.chmodSync(path.join(dir, 'tls.key'), 0o600);
  const data = path.join(tlsDir, '..data');
  let old = null;
  try { old = fs.readlinkSync(data); } catch (_) {}
  fs.symlinkSync(name, path.join(tlsDir, '..data_tmp'));
  fs.renameSync(path.join(tlsDir, '..data_tmp'), data);
  for (const f of ['tls.crt', 'tls.key']) {
    if (!fs.existsSync(path.join(tlsDir, f))) fs.symlinkSync(`..data/${f}`, path.join(tlsDir, f));
  }
  if (old) fs.rmSync(path.join(tlsDir, old), { recursive: true, force: true });
  return new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'tls.crt'))).fingerprint256;
}

if (args['rotate-only']) {
  console.log(rotate(args['rotate-only'], 0));
  process.exit(0);
}
// node bench/soak.js --chart OUT/samples.json --duration 30m --warmup 5m > chart.svg
if (args.chart) {
  const saved = JSON.parse(fs.readFileSync(args.chart, 'utf8')).samples;
  process.stdout.write(chart(saved, seconds(args.duration || '30m'), seconds(args.warmup || '5m')));
  process.exit(0);
}

const WORK = args.work;
const OUT = args.out;
const PID = Number(args.pid);
const PORT = Number(args.port);
const ADMIN = Number(args.admin);
const DURATION = seconds(args.duration || '30m');
const WARMUP = seconds(args.warmup || '5m');
const TOKEN_RATE = Number(args['token-rate'] || 40);
const SIGHUP_EVERY = seconds(args['sighup-every'] || '30s');
const ROTATE_EVERY = seconds(args['rotate-every'] || '2m');
const SAMPLE_EVERY = seconds(args['sample-every'] || '1m');
const CA = fs.readFileSync(path.join(WORK, 'ca.crt'));
const TLS_OPTS = { host: '127.0.0.1', port: PORT, servername: 'localhost', ca: CA };
const start = Date.now();
const elapsed = () => (Date.now() - start) / 1000;
let running = true;

// ---------- counters ----------
const total = { ok: {}, expected: {}, errors: {} };
let interval = { ok: {}, expected: {}, errors: {} };
let errorLines = 0;
const errorLog = fs.createWriteStream(path.join(OUT, 'errors.log'));
function bump(bucket, key, n = 1) {
  total[bucket][key] = (total[bucket][key] || 0) + n;
  interval[bucket][key] = (interval[bucket][key] || 0) + n;
}
const ok = (kind) => bump('ok', kind);
const expected = (kind) => bump('expected', kind);
function error(kind, what) {
  const key = `${kind}: ${what}`;
  bump('errors', key);
  if (errorLines++ < 200) errorLog.write(`${elapsed().toFixed(1)}s ${key}\n`);
}
const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);

// ---------- HTTP/1.1 requests ----------
function request(agent, { method = 'GET', path: p, headers = {}, body = null, hash = false }) {
  return new Promise((resolve, reject) => {
    const req = https.request({ ...TLS_OPTS, agent, method, path: p, headers, timeout: 30000 }, (res) => {
      const chunks = [];
      const digest = hash ? crypto.createHash('sha256') : null;
      let bytes = 0;
      res.on('data', (c) => {
        bytes += c.length;
        if (digest) digest.update(c);
        else chunks.push(c);
      });
      res.on('end', () =>
        resolve({ status: res.statusCode, bytes, body: Buffer.concat(chunks), sha256: digest && digest.digest('hex') }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('timeout', () => req.destroy(new Error('timeout (30 s)')));
    req.on('error', reject);
    req.end(body);
  });
}
const errText = (e) => e.code || e.message;

// Forwarded GETs on keep-alive connections; every 50th asks for `Connection: close`, so TLS
// handshakes (with whatever certificate is current) keep happening.
async function getClient(id) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  for (let n = 1; running; n++) {
    const p = n % 10 === 0 ? `/_t/slow?ms=20&c=${id}` : '/api/hello';
    try {
      const r = await request(agent, { path: p, headers: n % 50 === 0 ? { connection: 'close' } : {} });
      if (r.status === 200) ok('get');
      else error('get', `status ${r.status}`);
    } catch (e) {
      error('get', errText(e));
    }
    await sleep(20);
  }
  agent.destroy();
}

// ---------- cold session tokens ----------
// The template is `dev-token --sub user_0`; each request gets a new user and a new token, signed
// with the same dev key and header, so every one is verified with RSA (cold) and minted anew.
const template = fs.readFileSync(path.join(WORK, 'template.jwt'), 'utf8').trim();
const [tHeader, tPayload] = template.split('.');
const claims = JSON.parse(Buffer.from(tPayload, 'base64url'));
const signingKey = crypto.createPrivateKey(fs.readFileSync(path.join(WORK, 'dev-signing-key.pem')));
let userSeq = 0;
function coldToken() {
  const n = ++userSeq;
  const now = Math.floor(Date.now() / 1000);
  const payload = { ...claims, sub: `user_${n}`, sid: `sess_soak_${n}`, iat: now, nbf: now - 5, exp: now + 600 };
  const data = `${tHeader}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  return { sub: payload.sub, jwt: `${data}.${crypto.sign('sha256', Buffer.from(data), signingKey).toString('base64url')}` };
}
async function tokenClient(loops) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const every = (1000 * loops) / TOKEN_RATE;
  while (running) {
    const t0 = Date.now();
    const { sub, jwt } = coldToken();
    try {
      const r = await request(agent, {
        method: 'POST', path: '/api/stream/token',
        headers: { authorization: `Bearer ${jwt}`, 'content-length': 0 },
      });
      let body = {};
      try { body = JSON.parse(r.body); } catch (_) {}
      if (r.status === 200 && body.user_id === sub && body.token) ok('token');
      else error('token', `status ${r.status} ${body.error || ''}`.trim());
    } catch (e) {
      error('token', errText(e));
    }
    await sleep(Math.max(0, every - (Date.now() - t0)));
  }
  agent.destroy();
}

// ---------- 1 MiB uploads and downloads ----------
const MiB = 1024 * 1024;
const PATTERN = Buffer.alloc(64 * 1024);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = (i * 31 + 7) & 0xff; // tests/upstream/server.js
const DOWNLOAD_SHA = crypto.createHash('sha256').update(Buffer.concat(Array(16).fill(PATTERN))).digest('hex');
async function uploadClient() {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const body = crypto.randomBytes(MiB);
  for (let n = 0; running; n++) {
    body.writeUInt32BE(n, 0); // a different body every time
    const sha = crypto.createHash('sha256').update(body).digest('hex');
    try {
      const r = await request(agent, {
        method: 'POST', path: '/_t/upload', body,
        headers: { 'content-type': 'application/octet-stream', 'content-length': MiB },
      });
      let got = {};
      try { got = JSON.parse(r.body); } catch (_) {}
      if (r.status === 200 && got.bytes === MiB && got.sha256 === sha) ok('upload');
      else error('upload', `status ${r.status} bytes ${got.bytes}`);
    } catch (e) {
      error('upload', errText(e));
    }
    await sleep(200);
  }
  agent.destroy();
}
async function downloadClient() {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  while (running) {
    try {
      const r = await request(agent, { path: `/_t/download?bytes=${MiB}`, hash: true });
      if (r.status === 200 && r.bytes === MiB && r.sha256 === DOWNLOAD_SHA) ok('download');
      else error('download', `status ${r.status} bytes ${r.bytes}`);
    } catch (e) {
      error('download', errText(e));
    }
    await sleep(200);
  }
  agent.destroy();
}

// ---------- HTTP/2: GETs and 64 KiB downloads on 4 concurrent streams ----------
function h2Request(session, p) {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':path': p });
    let status = 0;
    let bytes = 0;
    stream.setTimeout(30000, () => stream.close(http2.constants.NGHTTP2_CANCEL));
    stream.on('response', (h) => { status = h[':status']; });
    stream.on('data', (c) => { bytes += c.length; });
    stream.on('end', () => resolve({ status, bytes }));
    stream.on('error', reject);
    stream.on('close', () => { if (!status) reject(new Error(`h2 stream closed (${stream.rstCode})`)); });
  });
}
async function h2Client() {
  let session = null;
  let used = 0;
  const open = () => {
    const s = http2.connect(`https://localhost:${PORT}`, { ...TLS_OPTS });
    s.on('error', (e) => error('h2 session', errText(e)));
    s.on('close', () => { if (session === s) session = null; });
    return s;
  };
  const loop = async (lane) => {
    for (let n = 0; running; n++) {
      if (!session) { session = open(); used = 0; }
      if (++used > 2000) { session.close(); session = open(); used = 0; } // a new handshake now and then
      const big = n % 4 === lane % 4;
      try {
        const r = await h2Request(session, big ? '/_t/download?bytes=65536' : '/api/hello');
        if (r.status === 200 && (!big || r.bytes === 65536)) ok('h2');
        else error('h2', `status ${r.status} bytes ${r.bytes}`);
      } catch (e) {
        error('h2', errText(e));
      }
      await sleep(20);
    }
  };
  await Promise.all([0, 1, 2, 3].map(loop));
  if (session) session.close();
}

// ---------- WebSocket echo ----------
function wsFrame(opcode, payload) {
  const mask = crypto.randomBytes(4);
  let head;
  if (payload.length < 126) head = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
  else if (payload.length < 65536) {
    head = Buffer.from([0x80 | opcode, 0x80 | 126, 0, 0]);
    head.writeUInt16BE(payload.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] ^= mask[i % 4];
  return Buffer.concat([head, mask, masked]);
}
class WebSocketClient {
  static connect() {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ ...TLS_OPTS, ALPNProtocols: ['http/1.1'] });
      const key = crypto.randomBytes(16).toString('base64');
      const want = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
      let buffered = Buffer.alloc(0);
      const timer = setTimeout(() => { socket.destroy(); reject(new Error('ws upgrade timeout')); }, 10000);
      socket.on('error', (e) => { clearTimeout(timer); reject(e); });
      socket.on('secureConnect', () => socket.write(
        `GET /_t/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`));
      const onData = (chunk) => {
        buffered = Buffer.concat([buffered, chunk]);
        const end = buffered.indexOf('\r\n\r\n');
        if (end < 0) return;
        clearTimeout(timer);
        socket.removeListener('data', onData);
        const head = buffered.subarray(0, end).toString();
        if (!/^HTTP\/1\.1 101/.test(head) || !head.toLowerCase().includes(want.toLowerCase())) {
          socket.destroy();
          return reject(new Error(`ws upgrade refused: ${head.split('\r\n')[0]}`));
        }
        resolve(new WebSocketClient(socket, buffered.subarray(end + 4)));
      };
      socket.on('data', onData);
    });
  }
  constructor(socket, rest) {
    this.socket = socket;
    this.buffered = Buffer.alloc(0);
    this.frames = [];
    this.waiting = null;
    this.closed = false;
    socket.on('data', (c) => this.feed(c));
    socket.on('close', () => { this.closed = true; this.wake(); });
    socket.on('error', () => {});
    if (rest.length) this.feed(rest);
  }
  feed(chunk) {
    this.buffered = Buffer.concat([this.buffered, chunk]);
    for (;;) {
      const b = this.buffered;
      if (b.length < 2) break;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) { if (b.length < 4) break; len = b.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (b.length < 10) break; len = Number(b.readBigUInt64BE(2)); off = 10; }
      if (b.length < off + len) break;
      this.frames.push({ opcode: b[0] & 0x0f, payload: b.subarray(off, off + len) });
      this.buffered = b.subarray(off + len);
    }
    this.wake();
  }
  wake() { if (this.waiting) { const w = this.waiting; this.waiting = null; w(); } }
  async next(ms = 10000) {
    const deadline = Date.now() + ms;
    while (!this.frames.length) {
      if (this.closed) throw new Error('ws closed by the server');
      if (Date.now() > deadline) throw new Error('ws echo timeout');
      await new Promise((r) => { this.waiting = r; setTimeout(r, 200); });
    }
    return this.frames.shift();
  }
  async echo(payload, opcode = 0x2) {
    this.socket.write(wsFrame(opcode, payload));
    const f = await this.next();
    if (f.opcode !== opcode || !f.payload.equals(payload)) throw new Error('ws echo mismatch');
  }
  async close() {
    this.socket.write(wsFrame(0x8, Buffer.from([0x03, 0xe8])));
    const f = await this.next();
    if (f.opcode !== 0x8) throw new Error('ws close not echoed');
    this.socket.end();
  }
}
// Short sessions: 10 messages (up to 70 KiB) and a close handshake, over and over.
async function wsClient() {
  while (running) {
    try {
      const ws = await WebSocketClient.connect();
      for (let i = 0; i < 10 && running; i++) {
        await ws.echo(crypto.randomBytes(i === 9 ? 70000 : 1 + Math.floor(Math.random() * 4096)));
        await sleep(50);
      }
      await ws.close();
      ok('ws');
    } catch (e) {
      error('ws', errText(e));
    }
    await sleep(300);
  }
}
// One tunnel for the whole run, a message every 15 s (well inside tunnel_idle_timeout).
async function wsLongLived() {
  let ws = null;
  while (running) {
    try {
      if (!ws) ws = await WebSocketClient.connect();
      await ws.echo(Buffer.from(`still here at ${elapsed().toFixed(0)} s`), 0x1);
      ok('ws long-lived');
    } catch (e) {
      error('ws long-lived', errText(e));
      ws = null;
    }
    for (let i = 0; i < 150 && running; i++) await sleep(100);
  }
  if (ws) await ws.close().catch(() => {});
}

// ---------- slowloris: the proxy must cut these off (expected, not errors) ----------
const slowSockets = new Set();
async function slowloris(tlsFirst) {
  while (running) {
    const t0 = Date.now();
    const cut = await new Promise((resolve) => {
      const s = tlsFirst ? tls.connect(TLS_OPTS) : net.connect({ host: '127.0.0.1', port: PORT });
      slowSockets.add(s);
      let timer = null;
      const give = () => { clearInterval(timer); slowSockets.delete(s); };
      // TLS: a request head one header line every 2 s, never finished (header_read_timeout).
      // Plain TCP: never a ClientHello (tls_handshake_timeout).
      s.on(tlsFirst ? 'secureConnect' : 'connect', () => {
        if (!tlsFirst) return;
        s.write('GET /api/hello HTTP/1.1\r\nHost: localhost\r\n');
        let i = 0;
        timer = setInterval(() => s.write(`X-Slow-${i++}: y\r\n`), 2000);
      });
      s.on('error', () => {});
      s.on('close', () => { give(); resolve(running ? 'cut' : 'stopped'); });
      setTimeout(() => { if (!s.destroyed) { give(); s.destroy(); resolve('not cut'); } }, 60000);
    });
    const kind = tlsFirst ? 'slowloris head' : 'slowloris handshake';
    if (cut === 'cut') expected(`${kind} cut off`);
    else if (cut === 'not cut') error(kind, 'not cut off within 60 s');
    if (Date.now() - t0 < 1000) await sleep(1000); // cut at once would be a refusal; do not spin
  }
}

// ---------- SIGHUP, rotation and the check that the new certificate is served ----------
let sighups = 0;
let rotations = 0;
const rotationLag = [];
function servedFingerprint() {
  return new Promise((resolve, reject) => {
    const s = tls.connect(TLS_OPTS, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
    s.setTimeout(10000, () => s.destroy(new Error('timeout')));
  });
}
async function rotation() {
  const n = ++rotations;
  const t0 = Date.now();
  let fp;
  try {
    fp = rotate(WORK, n);
  } catch (e) {
    return error('rotation', `openssl: ${e.message}`);
  }
  interval.rotations = (interval.rotations || 0) + 1;
  // Picked up by the reload poll (reload_interval 10 s) or the next SIGHUP (30 s): 45 s at most.
  while (Date.now() - t0 < 45000) {
    try {
      if ((await servedFingerprint()) === fp) {
        rotationLag.push((Date.now() - t0) / 1000);
        return;
      }
    } catch (e) {
      return error('rotation', `check: ${errText(e)}`);
    }
    await sleep(1000);
  }
  error('rotation', `certificate ${n} not served within 45 s`);
}

// ---------- measurements ----------
function proc() {
  const status = fs.readFileSync(`/proc/${PID}/status`, 'utf8');
  const kib = (k) => Number((new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status) || [])[1]);
  // RssAnon is the heap (mimalloc's segments, stacks); RssFile mostly the binary's own pages,
  // which the kernel maps in as they are used (and as other processes running the same binary
  // warm the page cache): a leak shows in RssAnon.
  // AnonHugePages: how much of RssAnon is transparent huge pages (2 MiB each, resident whole).
  const rollup = fs.readFileSync(`/proc/${PID}/smaps_rollup`, 'utf8');
  const huge = Number((/^AnonHugePages:\s+(\d+)/m.exec(rollup) || [0, 0])[1]);
  return {
    rss: kib('VmRSS'), hwm: kib('VmHWM'), anon: kib('RssAnon'), file: kib('RssFile'), huge,
    fds: fs.readdirSync(`/proc/${PID}/fd`).length,
  };
}
function metrics() {
  return new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port: ADMIN, path: '/metrics', timeout: 5000 }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve(text));
    }).on('error', () => resolve(''));
  });
}
const metric = (text, name) => {
  const m = new RegExp(`^stream_token_proxy_${name} (\\S+)`, 'm').exec(text);
  return m ? Number(m[1]) : null;
};
const samples = [];
async function sample() {
  const p = proc();
  const text = await metrics();
  const row = {
    t: Math.round(elapsed()),
    rss_kib: p.rss, hwm_kib: p.hwm, anon_kib: p.anon, file_kib: p.file, huge_kib: p.huge, fds: p.fds,
    open_connections: metric(text, 'open_connections'),
    open_tunnels: metric(text, 'open_tunnels'),
    requests: sum(interval.ok), errors: sum(interval.errors), cutoffs: sum(interval.expected),
    sighups: interval.sighups || 0, rotations: interval.rotations || 0,
    error_kinds: interval.errors,
  };
  samples.push(row);
  interval = { ok: {}, expected: {}, errors: {} };
  console.log(
    `${String(Math.round(row.t / 60)).padStart(3)} min  RSS ${(row.rss_kib / 1024).toFixed(1)} MiB ` +
    `(anon ${(row.anon_kib / 1024).toFixed(1)}, file ${(row.file_kib / 1024).toFixed(1)}, huge pages ${(row.huge_kib / 1024).toFixed(1)})  ` +
    `fds ${row.fds}  open_connections ${row.open_connections}  requests ${row.requests}  ` +
    `errors ${row.errors}  cut-offs ${row.cutoffs}`);
  return text;
}

// ---------- the report ----------
const mib = (k) => (k / 1024).toFixed(1);
function report(finalMetrics) {
  const after = samples.filter((s) => s.t >= WARMUP);
  const span = (key) => {
    const v = after.map((s) => s[key]);
    return v.length ? Math.max(...v) - Math.min(...v) : NaN;
  };
  const rssSpan = span('rss_kib');
  const anonSpan = span('anon_kib');
  const fdSpan = span('fds');
  const errors = sum(total.errors);
  const lines = [];
  lines.push(`| minute | RSS MiB | RssAnon | RssFile | AnonHugePages | peak RSS | fds | open connections | requests | errors | slowloris cut-offs | SIGHUPs | rotations |`);
  lines.push(`| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`);
  for (const s of samples) {
    lines.push(`| ${(s.t / 60).toFixed(0)} | ${mib(s.rss_kib)} | ${mib(s.anon_kib)} | ${mib(s.file_kib)} | ${mib(s.huge_kib)} | ${mib(s.hwm_kib)} | ${s.fds} | ${s.open_connections} | ` +
      `${s.requests} | ${s.errors} | ${s.cutoffs} | ${s.sighups} | ${s.rotations} |`);
  }
  const reloads = (finalMetrics.match(/^stream_token_proxy_reloads_total\{[^}]*\} \S+/gm) || []).join('; ');
  const handshakeFailures = metric(finalMetrics, 'tls_handshake_failures_total');
  const lag = rotationLag.length
    ? `${Math.min(...rotationLag).toFixed(0)}-${Math.max(...rotationLag).toFixed(0)} s` : 'n/a';
  const pass = errors === 0 && rssSpan <= 2048 && fdSpan <= 16;
  const md = [
    `Soak: ${(DURATION / 60).toFixed(0)} min, warm-up ${(WARMUP / 60).toFixed(0)} min, ` +
      `${sighups} SIGHUPs, ${rotations} certificate rotations (new certificate served ${lag} after the swap).`,
    '',
    ...lines,
    '',
    `Requests answered as expected: ${sum(total.ok)} (${Object.entries(total.ok).map(([k, v]) => `${k} ${v}`).join(', ')}); ` +
      `${userSeq} cold session tokens.`,
    `Slowloris cut-offs (expected): ${Object.entries(total.expected).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}.`,
    `Errors: ${errors}${errors ? ` (${Object.entries(total.errors).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}.`,
    `Proxy counters at the end: ${reloads}; tls_handshake_failures_total ${handshakeFailures}.`,
    `After warm-up: RSS ${mib(Math.min(...after.map((s) => s.rss_kib)))}-${mib(Math.max(...after.map((s) => s.rss_kib)))} MiB ` +
      `(spread ${mib(rssSpan)} MiB, target <= 2 MiB; RssAnon spread ${mib(anonSpan)} MiB), fds ${Math.min(...after.map((s) => s.fds))}-${Math.max(...after.map((s) => s.fds))} ` +
      `(spread ${fdSpan}, target <= 16): ${pass ? 'PASS' : 'FAIL'}.`,
  ].join('\n');
  fs.writeFileSync(path.join(OUT, 'soak.md'), md + '\n');
  fs.writeFileSync(path.join(OUT, 'samples.json'), JSON.stringify({ samples, total, rotationLag }, null, 1));
  fs.writeFileSync(path.join(OUT, 'soak.svg'), chart(samples, DURATION, WARMUP));
  console.log('\n' + md + `\n\nchart: ${path.join(OUT, 'soak.svg')}`);
  return pass;
}

// A small SVG: RSS (MiB) on top, fds and open connections below, the warm-up shaded.
function chart(samples, DURATION, WARMUP) {
  const W = 760, H = 200, L = 60, R = 20, T = 24, gap = 40;
  const tMax = Math.max(DURATION, ...samples.map((s) => s.t));
  const x = (t) => L + ((W - L - R) * t) / tMax;
  const panel = (top, title, series) => {
    const has = (p, key) => typeof p[key] === 'number' && !Number.isNaN(p[key]);
    series = series.filter((s) => samples.some((p) => has(p, s.key)));
    const all = series.flatMap((s) => samples.filter((p) => has(p, s.key)).map((p) => p[s.key]));
    let lo = Math.min(...all), hi = Math.max(...all);
    if (hi - lo < 4) { lo -= 2; hi += 2; }
    const y = (v) => top + H - (H * (v - lo)) / (hi - lo);
    const out = [
      `<rect x="${L}" y="${top}" width="${x(WARMUP) - L}" height="${H}" fill="#eee"/>`,
      `<rect x="${L}" y="${top}" width="${W - L - R}" height="${H}" fill="none" stroke="#999"/>`,
      `<text x="${L}" y="${top - 6}" font-size="13">${title}</text>`,
    ];
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      out.push(`<text x="${L - 6}" y="${y(v) + 4}" font-size="11" text-anchor="end">${v.toFixed(1)}</text>`);
      out.push(`<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`);
    }
    series.forEach((s, i) => {
      const pts = samples.filter((p) => has(p, s.key)).map((p) => `${x(p.t).toFixed(1)},${y(p[s.key]).toFixed(1)}`);
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.join(' ')}"/>`);
      // The legend sits above the panel, right-aligned, one entry after the other.
      out.push(`<text x="${W - R - 150 * i}" y="${top - 6}" font-size="12" fill="${s.color}" text-anchor="end">${s.label}</text>`);
    });
    return out.join('\n');
  };
  for (const s of samples) {
    s.rss_mib = s.rss_kib / 1024;
    if (s.anon_kib !== undefined) s.anon_mib = s.anon_kib / 1024;
  }
  const top2 = T + H + gap;
  const ticks = [];
  for (let m = 0; m * 60 <= tMax; m += Math.max(1, Math.round(tMax / 60 / 10))) {
    ticks.push(`<text x="${x(m * 60)}" y="${top2 + H + 16}" font-size="11" text-anchor="middle">${m}</text>`);
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${top2 + H + 40}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    panel(T, 'proxy RSS (MiB); grey: warm-up', [
      { key: 'rss_mib', label: 'RSS', color: '#c0392b' },
      { key: 'anon_mib', label: 'RssAnon (heap)', color: '#8e44ad' },
    ]),
    panel(top2, 'open fds and open connections', [
      { key: 'fds', label: 'open fds', color: '#2c3e50' },
      { key: 'open_connections', label: 'open_connections', color: '#27ae60' },
    ]),
    ...ticks,
    `<text x="${(W + L) / 2}" y="${top2 + H + 34}" font-size="12" text-anchor="middle">minutes</text>`,
    '</svg>',
    '',
  ].join('\n');
}

// ---------- the run ----------
async function main() {
  // The re-signed tokens must be what the proxy accepts, or every token request below would be
  // an error for the wrong reason.
  {
    const agent = new https.Agent({ keepAlive: false });
    const { sub, jwt } = coldToken();
    const r = await request(agent, {
      method: 'POST', path: '/api/stream/token', headers: { authorization: `Bearer ${jwt}`, 'content-length': 0 },
    });
    if (r.status !== 200 || JSON.parse(r.body).user_id !== sub) {
      console.error(`a re-signed dev token was refused: ${r.status} ${r.body}`);
      process.exit(2);
    }
  }
  await sample(); // minute 0, before the load
  const loops = [
    ...[0, 1, 2, 3].map(getClient),
    tokenClient(2), tokenClient(2),
    uploadClient(), downloadClient(), h2Client(),
    wsClient(), wsClient(), wsLongLived(),
    slowloris(true), slowloris(true), slowloris(true), slowloris(false),
  ];
  const timers = [
    setInterval(() => {
      process.kill(PID, 'SIGHUP');
      sighups++;
      interval.sighups = (interval.sighups || 0) + 1;
    }, SIGHUP_EVERY * 1000),
    // Offset by 17 s from the SIGHUPs, so that both the reload poll and SIGHUP pick rotations up.
    setTimeout(function again() {
      rotation();
      timers.push(setTimeout(again, ROTATE_EVERY * 1000));
    }, (ROTATE_EVERY - 17) * 1000),
  ];
  let lastMetrics = '';
  const sampler = setInterval(async () => { lastMetrics = await sample(); }, SAMPLE_EVERY * 1000);
  await sleep(DURATION * 1000 + 500);
  clearInterval(sampler);
  for (const t of timers) { clearInterval(t); clearTimeout(t); }
  running = false;
  for (const s of slowSockets) s.destroy();
  await Promise.race([Promise.allSettled(loops), sleep(60000)]);
  if (samples[samples.length - 1].t < DURATION - 1) lastMetrics = await sample();
  else lastMetrics = await metrics();
  const pass = report(lastMetrics);
  errorLog.end();
  process.exit(pass ? 0 : 1);
}
main().catch((e) => {
  console.error(e);
  process.exit(2);
});
