'use strict';
// The "existing Node server" the integration tests put behind the proxy. Node core only.
//
// Every path not listed below echoes the request as JSON: method, raw url, HTTP version, raw
// headers (names, values, order and duplicates as received), body length and sha256.
//
//   GET  /api/hello              {"message":"hello"}
//   GET  /_t/download?bytes=N    N bytes of a fixed pattern, chunked, no Content-Length
//   POST /_t/upload              {"bytes":N,"sha256":"..."} of the request body
//   GET  /_t/cookies             three Set-Cookie and a repeated X-Multi header
//   GET  /_t/status/<code>       that status (204 and 304 without a body)
//   GET  /_t/hop                 hop-by-hop response headers (they must not reach the client)
//   GET  /_t/slow?ms=N           answers after N ms
//   GET  /_t/hang                never answers
//   GET  /_t/trailers            chunked body with an X-Checksum trailer
//   GET  /_t/truncate[?length=N] 1000 bytes of a body (announced as N bytes, or chunked), then
//                                the socket is destroyed: an upstream dying mid-response
//   GET  /_t/stats               {"requests":N, ...} requests seen since start (or the last reset),
//                                plus the counters below (never reset)
//   POST /_t/reset               sets the request counter to 0 (and empties the /_t/seen log)
//   GET  /_t/seen[?clear=1]      {"seen":[{"method","url","state"}, ...]}: every request since start
//                                or the last clear (not /_t/stats nor /_t/seen itself; at most
//                                1000), state "open", "complete" or "aborted" (the body never
//                                completed); clear=1 empties the log after answering
//   POST /_t/drop-next           the next request (any path but /_t/stats) gets its socket
//                                destroyed without an answer, as a keep-alive race would
//   GET  /_t/ws (Upgrade)        WebSocket echo (text, binary, ping, close)
//   GET  /_t/browser             tests/upstream/browser.html (the page tests/browser.rs drives)
//   GET  /_t/old-token-hits      {"hits":[url, ...]}: requests that a Node router would have sent
//                                to the old, unauthenticated token handler (see oldTokenRoute)
//
// Listens on 127.0.0.1 and PORT (0 = ephemeral) and prints {"port":N} on stdout when ready.
//
// Opt-in, for scripts/pod-lifecycle.sh (unset, the server behaves as described above: it
// listens at once and, like any Node process without a handler, dies at once on SIGTERM):
//   STARTUP_DELAY_MS=N       listen only after N ms, like an app that loads and connects first
//   DRAIN_ON_SIGTERM_MS=N    on SIGTERM do what a real app's handler does: stop accepting, close
//                            idle keep-alive connections, answer in-flight requests with
//                            `Connection: close`, exit once every connection has closed or after
//                            N ms, whichever comes first
// Opt-in, for tests/upstream_restarts.rs:
//   KEEP_ALIVE_TIMEOUT_MS=N  server.keepAliveTimeout (Node's default 5000). Node 20 closes an
//                            idle keep-alive socket 1 s later than this (its internal buffer)
const http = require('http');
const crypto = require('crypto');
const legacyUrl = require('url');

const PATTERN = Buffer.alloc(64 * 1024);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = (i * 31 + 7) & 0xff;

let requests = 0;
// Counters for the tests, reported by /_t/stats.
const counters = {
  connections: 0, // TCP connections accepted
  open_connections: 0, // TCP connections not yet closed (including the one asking)
  aborted: 0, // requests whose body never completed (the sender went away mid-body)
  dropped: 0, // requests destroyed by /_t/drop-next
  uploads: 0, // /_t/upload requests that arrived
  slow_inflight: 0, // /_t/slow requests not yet answered or closed
  hang_closed: 0, // /_t/hang requests whose connection the proxy closed
  downloads_cut: 0, // /_t/download responses whose connection closed before the end
  ws_open: 0, // WebSocket connections open now
  old_token_handler: 0, // requests a Node router would have routed to the old token handler
};
let oldTokenHits = [];
let dropNext = false;
// Requests as they arrived, for tests that must know exactly what reached Node (/_t/seen).
let seen = [];
function logSeen(req) {
  const path = req.url.split('?')[0];
  if (path === '/_t/stats' || path === '/_t/seen' || path === '/_t/old-token-hits') return null;
  const entry = { method: req.method, url: req.url, state: 'open' };
  if (seen.length < 1000) seen.push(entry);
  return entry;
}

// ---------- the old token route ----------
// This upstream plays the app that still has its old, unauthenticated `POST /api/stream/token`
// handler. A Node app finds its route from req.url in one of these ways, and a lenient router
// then matches case-insensitively, ignores trailing slashes, may decode %xx once and may cut
// the path at the first ';'. A request that any combination routes to the old handler is
// counted: behind the proxy, none may ever be.
function routeViews(req) {
  const views = [req.url.split('?')[0]]; // a plain string split
  try {
    views.push(new URL(req.url, 'http://' + (req.headers.host || 'upstream.invalid')).pathname);
  } catch (_) {} // Node's docs: new URL(req.url, `http://${req.headers.host}`)
  try {
    views.push(new URL(req.url, 'http://upstream.invalid').pathname);
  } catch (_) {}
  try {
    const legacy = legacyUrl.parse(req.url).pathname; // the legacy API
    if (legacy) views.push(legacy);
  } catch (_) {}
  return views;
}

function oldTokenRoute(req) {
  if (req.method !== 'POST') return false;
  const forms = [];
  for (const view of routeViews(req)) {
    forms.push(view);
    try { forms.push(decodeURIComponent(view)); } catch (_) {}
  }
  for (const form of [...forms]) forms.push(form.split(';')[0]);
  return forms.some((f) => f.toLowerCase().replace(/\/+$/, '') === '/api/stream/token');
}

function json(res, status, value, extraHeaders = {}) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...extraHeaders });
  res.end(body);
}

function readBody(req, done) {
  const hash = crypto.createHash('sha256');
  let bytes = 0;
  req.on('data', (chunk) => {
    bytes += chunk.length;
    hash.update(chunk);
  });
  req.on('end', () => done(bytes, hash.digest('hex')));
  req.on('error', () => {});
}

function download(res, total) {
  res.on('close', () => {
    if (!res.writableFinished) counters.downloads_cut++;
  });
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(PATTERN.length, total - sent);
      sent += n;
      if (!res.write(n === PATTERN.length ? PATTERN : PATTERN.subarray(0, n))) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

const drainMs = Number(process.env.DRAIN_ON_SIGTERM_MS || 0);
let draining = false; // DRAIN_ON_SIGTERM_MS: SIGTERM arrived
const server = http.createServer((req, res) => {
  requests++;
  if (drainMs > 0) {
    // Once draining, every response (also those already in flight) closes its connection.
    const writeHead = res.writeHead;
    res.writeHead = function (...args) {
      if (draining) this.setHeader('connection', 'close');
      return writeHead.apply(this, args);
    };
  }
  const entry = logSeen(req);
  if (oldTokenRoute(req)) {
    counters.old_token_handler++;
    if (oldTokenHits.length < 1000) oldTokenHits.push(req.url);
  }
  let url;
  try {
    url = new URL(req.url, 'http://upstream.invalid');
  } catch (_) {
    url = new URL('http://upstream.invalid/_t/unparsable'); // echoed below like any other path
  }
  const path = url.pathname;
  req.on('close', () => {
    if (!req.complete) counters.aborted++;
    if (entry) entry.state = req.complete ? 'complete' : 'aborted';
  });

  if (dropNext && path !== '/_t/stats') {
    dropNext = false;
    counters.dropped++;
    return req.socket.destroy();
  }
  if (path === '/_t/drop-next') {
    dropNext = true;
    return json(res, 200, { armed: true });
  }
  if (path === '/api/hello') return json(res, 200, { message: 'hello' });
  if (path === '/_t/old-token-hits') return json(res, 200, { hits: oldTokenHits });
  if (path === '/_t/browser') {
    const page = require('fs').readFileSync(require('path').join(__dirname, 'browser.html'));
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': page.length });
    return res.end(page);
  }
  if (path === '/_t/stats') return json(res, 200, { requests: requests - 1, ...counters });
  if (path === '/_t/seen') {
    const list = seen;
    if (url.searchParams.get('clear') === '1') seen = [];
    return json(res, 200, { seen: list });
  }
  if (path === '/_t/reset') {
    requests = 0;
    seen = [];
    return json(res, 200, { requests: 0 });
  }
  if (path === '/_t/download') return download(res, Number(url.searchParams.get('bytes') || 0));
  if (path === '/_t/upload') {
    counters.uploads++;
    return readBody(req, (bytes, sha256) => json(res, 200, { bytes, sha256 }));
  }
  if (path === '/_t/cookies') {
    res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; Path=/; HttpOnly', 'c=3; Path=/; Secure']);
    res.setHeader('x-multi', ['one', 'two']);
    return json(res, 200, { rawHeaders: req.rawHeaders });
  }
  if (path.startsWith('/_t/status/')) {
    const status = Number(path.slice('/_t/status/'.length));
    if (status === 204 || status === 304) {
      res.writeHead(status, { etag: '"v1"' });
      return res.end();
    }
    return json(res, status, { status });
  }
  if (path === '/_t/hop') {
    res.writeHead(200, {
      'content-type': 'text/plain',
      connection: 'keep-alive, X-Hop-Resp',
      'x-hop-resp': 'must-not-pass',
      'keep-alive': 'timeout=5',
      'proxy-connection': 'keep-alive',
      'x-end-to-end': 'kept',
    });
    return res.end('hop');
  }
  if (path === '/_t/slow') {
    const ms = Number(url.searchParams.get('ms') || 1000);
    counters.slow_inflight++;
    const timer = setTimeout(() => json(res, 200, { slept_ms: ms }), ms);
    res.on('close', () => {
      counters.slow_inflight--;
      clearTimeout(timer);
    });
    return;
  }
  if (path === '/_t/hang') {
    res.on('close', () => counters.hang_closed++);
    return; // never answers
  }
  if (path === '/_t/truncate') {
    const length = url.searchParams.get('length');
    res.writeHead(200, length ? { 'content-length': length } : {});
    return res.write(PATTERN.subarray(0, 1000), () => req.socket.destroy());
  }
  if (path === '/_t/trailers') {
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' });
    res.write('part one,');
    res.write('part two');
    res.addTrailers({ 'x-checksum': 'abc123' });
    return res.end();
  }

  // Default: echo the request exactly as Node received it.
  readBody(req, (bytes, sha256) =>
    json(res, 200, {
      method: req.method,
      url: req.url,
      httpVersion: req.httpVersion,
      rawHeaders: req.rawHeaders,
      bodyBytes: bytes,
      bodySha256: sha256,
    }),
  );
});

if (process.env.KEEP_ALIVE_TIMEOUT_MS) server.keepAliveTimeout = Number(process.env.KEEP_ALIVE_TIMEOUT_MS);

server.on('connection', (socket) => {
  counters.connections++;
  counters.open_connections++;
  socket.on('close', () => counters.open_connections--);
});

// ---------- WebSocket echo (RFC 6455), just enough for the tests ----------
server.on('upgrade', (req, socket) => {
  requests++;
  const entry = logSeen(req);
  if (entry) entry.state = 'complete';
  const key = req.headers['sec-websocket-key'];
  if (new URL(req.url, 'http://x').pathname !== '/_t/ws' || !key) {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  counters.ws_open++;
  socket.on('close', () => counters.ws_open--);
  // Like the `ws` package: the peer's FIN ends our side too (the HTTP server's sockets allow
  // half-open connections, so without this an upgraded socket would outlive its peer).
  socket.on('end', () => socket.end());
  let buffered = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    for (;;) {
      if (buffered.length < 2) return;
      const opcode = buffered[0] & 0x0f;
      const masked = (buffered[1] & 0x80) !== 0;
      let length = buffered[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffered.length < 4) return;
        length = buffered.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buffered.length < 10) return;
        length = Number(buffered.readBigUInt64BE(2));
        offset = 10;
      }
      const maskLen = masked ? 4 : 0;
      if (buffered.length < offset + maskLen + length) return;
      const mask = buffered.subarray(offset, offset + maskLen);
      const payload = Buffer.from(buffered.subarray(offset + maskLen, offset + maskLen + length));
      if (masked) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      buffered = buffered.subarray(offset + maskLen + length);
      const reply = opcode === 0x9 ? 0xa : opcode; // ping -> pong, everything else echoed
      socket.write(frame(reply, payload));
      if (opcode === 0x8) return socket.end();
    }
  });
  socket.on('error', () => {});
});

function frame(opcode, payload) {
  let header;
  if (payload.length < 126) {
    header = Buffer.from([0x80 | opcode, payload.length]);
  } else if (payload.length < 65536) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = 126;
    header.writeUInt16BE(payload.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([header, payload]);
}

function listen() {
  server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
  });
}
const startupDelayMs = Number(process.env.STARTUP_DELAY_MS || 0);
if (startupDelayMs > 0) setTimeout(listen, startupDelayMs);
else listen();
if (drainMs > 0) {
  process.on('SIGTERM', () => {
    draining = true;
    server.close(() => process.exit(0)); // stops accepting; called back once all have closed
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), drainMs).unref();
  });
}
// Stop when the test that started us goes away (stdin closes), so no process outlives a run.
// Only a pipe is watched: started by hand with `&`, stdin is a terminal (reading it from the
// background would stop the process) or /dev/null (at end at once).
let stdinIsPipe = false;
try { stdinIsPipe = require('fs').fstatSync(0).isFIFO(); } catch (_) {}
if (stdinIsPipe) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
