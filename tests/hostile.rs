//! Hostile input (issue 7, security verification): raw bytes over real TLS against the proxy
//! in-process, with the real Node upstream behind it. Every probe checks what the client got
//! back AND what reached Node, through the upstream's `/_t/seen` log (method, url and whether the
//! body completed), so "refused" always means "refused before Node saw anything".
//!
//! Sections: 1. HTTP/1.1 framing (request smuggling) 2. heads, headers and request targets
//! 3. HTTP/2 4. TLS-level garbage 5. spellings of the token route's path.

mod common;

use std::time::{Duration, Instant};

use common::h2raw::*;
use common::*;
use http::{Request, StatusCode};
use stream_token_proxy::config::PositiveDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a probe waits for the proxy to answer and close the connection.
const PROBE_WAIT: Duration = Duration::from_secs(5);

// ---------- fixtures ----------

struct Fixture {
    upstream: NodeUpstream,
    proxy: TestProxy,
    client: TlsClient,
}

impl Fixture {
    async fn start(tweak: impl FnOnce(&mut stream_token_proxy::Config)) -> Self {
        let upstream = NodeUpstream::start();
        let proxy = TestProxy::start(&upstream.url(), tweak).await;
        let client = proxy.client();
        let fixture = Self {
            upstream,
            proxy,
            client,
        };
        fixture.seen().await; // start from an empty log
        fixture
    }

    /// What reached Node since the last call, once every request there has finished.
    async fn seen(&self) -> Vec<Seen> {
        node_seen(self.upstream.port).await
    }

    /// Sends `request` over a new TLS connection: what came back, and what reached Node.
    async fn probe(&self, request: &[u8]) -> (Exchange, Vec<Seen>) {
        let exchange = exchange(&self.client, request).await;
        (exchange, self.seen().await)
    }

    /// Every case must get a 400 that closes its connection, with nothing reaching Node.
    async fn assert_refused_unseen(&self, cases: &[(&str, impl AsRef<[u8]>)]) {
        let mut failures = Vec::new();
        for (name, request) in cases {
            let (exchange, seen) = self.probe(request.as_ref()).await;
            if exchange.status() != Some(400) || !exchange.closed || !seen.is_empty() {
                failures.push(exchange.describe(name, &seen));
            }
        }
        assert_no_failures(failures);
    }
}

/// What the proxy sent back on one raw connection, and whether it closed it.
struct Exchange {
    bytes: Vec<u8>,
    closed: bool,
}

impl Exchange {
    fn response(&self) -> Option<RawResponse> {
        (self.bytes.starts_with(b"HTTP/1.") && self.bytes.windows(4).any(|w| w == b"\r\n\r\n"))
            .then(|| RawResponse::parse(&self.bytes))
    }

    fn status(&self) -> Option<u16> {
        self.response().map(|r| r.status)
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.chars().take(300).collect()
    }

    /// A failure line: what the proxy answered, whether it closed, and what reached Node.
    fn describe(&self, name: &str, seen: &[Seen]) -> String {
        format!(
            "{name}: status {:?}, closed {}, Node saw {seen:?}; got {:?}",
            self.status(),
            self.closed,
            self.text()
        )
    }
}

/// Writes `request` raw over a new TLS connection and reads until the proxy closes, for at most
/// [`PROBE_WAIT`]. A write the proxy cut short (it answered and closed first) is fine.
async fn exchange(client: &TlsClient, request: &[u8]) -> Exchange {
    let mut stream = client.connect(&[b"http/1.1"]).await;
    let _ = stream.write_all(request).await;
    let _ = stream.flush().await;
    let mut bytes = Vec::new();
    // An error (reset, no close_notify) ends the connection as surely as EOF does.
    let closed = tokio::time::timeout(PROBE_WAIT, stream.read_to_end(&mut bytes))
        .await
        .is_ok();
    Exchange { bytes, closed }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails with every broken expectation at once, so one run shows the whole picture.
fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} probe(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------- 1. HTTP/1.1 framing: request smuggling ----------

/// Framing a server must refuse outright (RFC 9112 §6.1, §6.3, §5.1, §5.2, §2.2): the proxy
/// answers 400 and closes, and Node sees nothing, neither the request nor what hides behind it.
#[tokio::test]
async fn ambiguous_framing_is_a_400_and_nothing_reaches_node() {
    let f = Fixture::start(|_| {}).await;
    let hidden = "GET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let post = |headers: &str, body: &str| {
        format!("POST /echo/framing HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n{body}")
    };
    let chunked_body = format!("5\r\nhello\r\n0\r\n\r\n{hidden}");
    let cases: Vec<(&str, String)> = vec![
        (
            "two different Content-Length headers",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ),
        (
            "Content-Length: 5, 6",
            post("Content-Length: 5, 6\r\n", "hello!"),
        ),
        (
            "Content-Length: +5",
            post("Content-Length: +5\r\n", "hello"),
        ),
        (
            "Content-Length: 0x5",
            post("Content-Length: 0x5\r\n", "hello"),
        ),
        (
            "obs-folded Transfer-Encoding",
            post("Transfer-Encoding:\r\n chunked\r\n", &chunked_body),
        ),
        (
            "Transfer-Encoding: chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", &chunked_body),
        ),
        (
            "Transfer-Encoding: chunked twice, on two lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                &chunked_body,
            ),
        ),
        (
            "Transfer-Encoding: xchunked",
            post("Transfer-Encoding: xchunked\r\n", &chunked_body),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", &chunked_body),
        ),
        (
            "space before the colon of Transfer-Encoding",
            post("Transfer-Encoding : chunked\r\n", &chunked_body),
        ),
        (
            "Transfer-Encoding in an HTTP/1.0 request",
            format!(
                "POST /echo/framing HTTP/1.0\r\nHost: localhost\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{chunked_body}"
            ),
        ),
        (
            "CR without LF inside a header value",
            post("X-A: one\rtwo\r\nContent-Length: 0\r\n", hidden),
        ),
        (
            "CR without LF ending a header line",
            post("X-A: one\rContent-Length: 0\r\n", hidden),
        ),
        (
            "CR without LF ending the request line",
            format!("GET /echo/framing HTTP/1.1\rHost: localhost\r\n\r\n{hidden}"),
        ),
    ];
    f.assert_refused_unseen(&cases).await;

    // A coding the proxy cannot undo is a 501 (tests/forwarding.rs); the bytes after it are
    // not read as a next request either.
    let request = post("Transfer-Encoding: gzip, chunked\r\n", &chunked_body);
    let (exchange, seen) = f.probe(request.as_bytes()).await;
    assert_eq!(exchange.status(), Some(501), "{:?}", exchange.text());
    assert!(exchange.closed);
    assert_eq!(seen, []);

    assert_eq!(
        f.client.h1(get("/api/hello")).await.status(),
        StatusCode::OK,
        "still serving"
    );
    f.proxy.stop().await;
}

/// `Content-Length` together with `Transfer-Encoding: chunked`, in both orders and with the
/// classic CL.TE and TE.CL payloads. RFC 9112 §6.1 lets a server either refuse such a request
/// or read it by `Transfer-Encoding` alone and then close the connection; hyper does the
/// latter. What matters for smuggling holds either way: Node sees exactly one request, framed
/// one way (chunked, no `Content-Length`), and the bytes a `Content-Length` reader would have
/// taken for a second request are never served: the proxy closes the connection after the
/// response even though the client asked for keep-alive.
#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_once_and_the_connection_closes() {
    let f = Fixture::start(|_| {}).await;
    let hidden = "GET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

    // CL.TE: a Content-Length reader takes everything as the body; a chunked reader stops at
    // the empty chunk and would take `hidden` as the next request.
    let body = format!("0\r\n\r\n{hidden}");
    let cl_te = format!(
        "POST /echo/cl-te HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    // TE.CL: a chunked reader takes `hidden` as chunk data; a Content-Length reader stops
    // after "2f\r\n" and would take `hidden` as the next request.
    let te_cl = format!(
        "POST /echo/te-cl HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: 4\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
        hidden.len()
    );
    for (request, url, body_bytes) in [
        (cl_te, "/echo/cl-te", 0),
        (te_cl, "/echo/te-cl", hidden.len()),
    ] {
        let (exchange, seen) = f.probe(request.as_bytes()).await;
        let response = exchange
            .response()
            .unwrap_or_else(|| panic!("{url}: no response: {:?}", exchange.text()));
        assert_eq!(response.status, 200, "{url}: {}", response.status_line);
        let echo = response.json();
        assert_eq!(echo["bodyBytes"], body_bytes, "{url}: read as chunked");
        assert!(
            echoed(&echo, "content-length").is_empty(),
            "{url}: no Content-Length reached Node: {echo}"
        );
        assert!(
            exchange.closed,
            "{url}: the connection is closed after the response"
        );
        assert!(!lossy(&exchange.bytes).contains("smuggled"), "{url}");
        assert_eq!(seen, [Seen::complete("POST", url)], "{url}: one request");
    }
    f.proxy.stop().await;
}

/// A head the proxy accepts whose chunked body then turns out malformed: too large a size,
/// invalid characters, bare LF, overlong extensions, data longer than announced. The head was
/// already forwarded (bodies are streamed), so Node may see the request start, but never a
/// complete request: the upstream connection is cut before the last chunk. The client gets a
/// 400 `bad_request` (its fault, not the upstream's: not a 502, not counted as an upstream
/// error) and the connection closes, so nothing after the bad chunk is read as a request.
#[tokio::test]
async fn a_malformed_chunked_body_never_completes_at_node() {
    let f = Fixture::start(|_| {}).await;
    let hidden = "GET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(20 * 1024));
    let cases: Vec<(&str, String)> = vec![
        (
            "chunk size overflowing 64 bits",
            format!("ffffffffffffffffff\r\nhello\r\n0\r\n\r\n{hidden}"),
        ),
        (
            "chunk size with a non-hex character",
            format!("5g\r\nhello\r\n0\r\n\r\n{hidden}"),
        ),
        (
            "chunk size written 0x5",
            format!("0x5\r\nhello\r\n0\r\n\r\n{hidden}"),
        ),
        (
            "negative chunk size",
            format!("-5\r\nhello\r\n0\r\n\r\n{hidden}"),
        ),
        (
            "chunk size line ended by a bare LF",
            format!("5\nhello\r\n0\r\n\r\n{hidden}"),
        ),
        (
            "chunk data ended by a bare LF",
            format!("5\r\nhello\n0\r\n\r\n{hidden}"),
        ),
        (
            "last chunk ended by bare LFs",
            format!("5\r\nhello\r\n0\n\n{hidden}"),
        ),
        (
            "chunk extension with a bare LF",
            format!("5;ext\nhello\r\n0\r\n\r\n{hidden}"),
        ),
        ("20 KiB chunk extension", long_extension),
        (
            "chunk data longer than its size",
            format!("3\r\nhello\r\n0\r\n\r\n{hidden}"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, body) in &cases {
        let request = format!(
            "POST /echo/bad-chunk HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
             \r\n{body}"
        );
        let (exchange, seen) = f.probe(request.as_bytes()).await;
        let completed: Vec<_> = seen.iter().filter(|s| s.state != "aborted").collect();
        let code = exchange.response().map(|r| r.json()["error"].clone());
        let status_ok = exchange.status() == Some(400) && code == Some("bad_request".into());
        if !completed.is_empty() || seen.len() > 1 || !exchange.closed || !status_ok {
            failures.push(exchange.describe(name, &seen));
        }
    }
    assert_no_failures(failures);
    let metrics = common::admin::metrics_text(&f.proxy).await;
    assert!(
        !metrics.contains("upstream_errors_total{"),
        "a client's broken body is not an upstream error:\n{metrics}"
    );
    f.proxy.stop().await;
}

/// Bare LF as a line end in the head: RFC 9112 §2.2 lets a recipient accept it, and hyper
/// (httparse) does. That is safe here because the proxy never passes the client's bytes on: it
/// parses the head once and writes a fresh CRLF head for Node, so Node and the proxy cannot
/// disagree about where a header ends. A `Transfer-Encoding` behind a bare LF is a header to
/// both (the body is read chunked, exactly once).
#[tokio::test]
async fn bare_lf_heads_are_parsed_once_and_forwarded_as_clean_crlf() {
    let f = Fixture::start(|_| {}).await;
    let (exchange, seen) = f
        .probe(b"GET /echo/lf HTTP/1.1\nHost: localhost\nX-A: 1\nConnection: close\n\n")
        .await;
    let response = exchange.response().expect("a response");
    assert_eq!(response.status, 200, "{}", response.status_line);
    assert_eq!(echoed(&response.json(), "x-a"), ["1"]);
    assert_eq!(seen, [Seen::complete("GET", "/echo/lf")]);

    let (exchange, seen) = f
        .probe(
            b"POST /echo/lf-te HTTP/1.1\r\nHost: localhost\r\nX-A: 1\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\n\r\n",
        )
        .await;
    let response = exchange.response().expect("a response");
    assert_eq!(response.status, 200, "{}", response.status_line);
    let echo = response.json();
    assert_eq!(echoed(&echo, "x-a"), ["1"], "{echo}");
    assert_eq!(echo["bodyBytes"], 5);
    assert_eq!(seen, [Seen::complete("POST", "/echo/lf-te")]);
    f.proxy.stop().await;
}

// ---------- 2. heads, headers and request targets ----------

/// Request lines and header fields that are not HTTP/1.1 (RFC 9112 §3, §5; RFC 9110 §5.1,
/// §5.5): 400, closed, nothing at Node.
#[tokio::test]
async fn malformed_request_lines_and_header_fields_are_a_400() {
    let f = Fixture::start(|_| {}).await;
    let with_header = |line: &[u8]| {
        let mut r = b"GET /echo/header HTTP/1.1\r\nHost: localhost\r\n".to_vec();
        r.extend_from_slice(line);
        r.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        r
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "two spaces in the request line",
            b"GET  /echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        (
            "a tab in the request line",
            b"GET\t/echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        (
            "a space after the version",
            b"GET /echo/x HTTP/1.1 \r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("HTTP/0.9 (no version)", b"GET /echo/x\r\n\r\n".to_vec()),
        (
            "unknown version HTTP/1.2",
            b"GET /echo/x HTTP/1.2\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        (
            "lower-case version",
            b"GET /echo/x http/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("a space in a header name", with_header(b"X A: 1")),
        ("a control byte in a header name", with_header(b"X\x01A: 1")),
        ("'(' in a header name", with_header(b"X(A): 1")),
        ("'@' in a header name", with_header(b"X@A: 1")),
        ("'/' in a header name", with_header(b"X/A: 1")),
        ("a quoted header name", with_header(b"\"X-A\": 1")),
        ("an empty header name", with_header(b": 1")),
        (
            "a header name in UTF-8",
            with_header("X-\u{e9}: 1".as_bytes()),
        ),
        ("NUL in a header value", with_header(b"X-A: a\0b")),
        ("DEL in a header value", with_header(b"X-A: a\x7fb")),
        (
            "a control byte in a header value",
            with_header(b"X-A: a\x1bb"),
        ),
        (
            "whitespace before the first header (obs-fold of the request line)",
            b"GET /echo/x HTTP/1.1\r\n Host: localhost\r\n\r\n".to_vec(),
        ),
    ];
    f.assert_refused_unseen(&cases).await;
    f.proxy.stop().await;
}

/// Heads over `server.max_header_bytes` (16 KiB) or with more than hyper's 100 fields: 431,
/// closed, nothing at Node. Just under the limit still goes through.
#[tokio::test]
async fn oversized_heads_and_too_many_headers_are_a_431() {
    let f = Fixture::start(|_| {}).await;
    let head = |headers: &str| {
        format!("GET /echo/big HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
    };
    let one_big = head(&format!("X-Big: {}\r\n", "a".repeat(17 * 1024)));
    let many_medium: String = (0..20)
        .map(|i| format!("X-Medium-{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    let too_many: String = (0..150).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    for (name, request) in [
        ("one 17 KiB header", one_big),
        ("twenty 1 KB headers", head(&many_medium)),
        ("150 headers", head(&too_many)),
    ] {
        let (exchange, seen) = f.probe(request.as_bytes()).await;
        assert_eq!(
            exchange.status(),
            Some(431),
            "{name}: {:?}",
            exchange.text()
        );
        assert!(exchange.closed, "{name}");
        assert_eq!(seen, [], "{name}");
    }

    let fits = head(&format!("X-Big: {}\r\n", "a".repeat(12 * 1024)));
    let (exchange, seen) = f.probe(fits.as_bytes()).await;
    assert_eq!(exchange.status(), Some(200), "{:?}", exchange.text());
    assert_eq!(seen, [Seen::complete("GET", "/echo/big")]);
    f.proxy.stop().await;
}

/// Absolute-form goes to Node as origin-form with the client's own `Host` (the authority in the
/// target is never used to pick a destination: there is only one upstream); authority-form and
/// asterisk-form are a 400, CONNECT a 501, and none of them reach Node.
#[tokio::test]
async fn request_target_forms_cannot_steer_the_proxy() {
    let f = Fixture::start(|_| {}).await;
    let (exchange, seen) = f
        .probe(b"GET http://evil.example/echo/abs?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let response = exchange.response().expect("a response");
    assert_eq!(response.status, 200, "{}", response.status_line);
    let echo = response.json();
    assert_eq!(echo["url"], "/echo/abs?q=1");
    assert!(!echo.to_string().contains("evil"), "{echo}");
    assert_eq!(seen, [Seen::complete("GET", "/echo/abs?q=1")]);

    let upstream_authority = format!("127.0.0.1:{}", f.upstream.port);
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "CONNECT to an outside host",
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".into(),
            501,
        ),
        (
            "CONNECT to the upstream itself",
            format!("CONNECT {upstream_authority} HTTP/1.1\r\nHost: {upstream_authority}\r\n\r\n"),
            501,
        ),
        (
            "authority-form GET",
            "GET localhost:443 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            400,
        ),
        (
            "asterisk-form OPTIONS",
            "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            400,
        ),
        (
            "asterisk-form GET",
            "GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, status) in &cases {
        let (exchange, seen) = f.probe(request.as_bytes()).await;
        if exchange.status() != Some(*status) || !seen.is_empty() {
            failures.push(format!(
                "{name}: status {:?} (want {status}), Node saw {seen:?}; got {:?}",
                exchange.status(),
                exchange.text()
            ));
        }
    }
    assert_no_failures(failures);
    f.proxy.stop().await;
}

/// Userinfo in the target (RFC 9110 §4.2.4: never sent in an http(s) URI) and an upgrade
/// request with a body (the tunnel would start with bytes already read as HTTP) are a 400, and
/// Node sees neither. An absolute-form target with a query but an empty path is `/?query`
/// (RFC 9112 §3.2.1), forwarded.
#[tokio::test]
async fn userinfo_targets_and_upgrades_with_a_body_are_refused() {
    let f = Fixture::start(|_| {}).await;
    let upgrade_with_body = "GET /_t/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 5\r\n\r\nhello";
    f.assert_refused_unseen(&[
        (
            "userinfo in absolute-form",
            "GET http://evil@localhost/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ),
        ("an upgrade with a body", upgrade_with_body),
    ])
    .await;

    let (exchange, seen) = f
        .probe(b"GET http://localhost?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(exchange.status(), Some(200), "{}", exchange.text());
    assert_eq!(seen, [Seen::complete("GET", "/?q=1")]);

    // HTTP/2: `:authority` with userinfo (RFC 9113 §8.3.1) never becomes a Host header.
    let fields: [(&str, &[u8]); 4] = [
        (":method", b"GET"),
        (":scheme", b"https"),
        (":authority", b"evil@localhost"),
        (":path", b"/echo/userinfo"),
    ];
    let reply = h2_raw(&f.client, &fields, None).await;
    // 0x8c: `:status 400` from the HPACK static table.
    assert_eq!(reply, H2Reply::Response(0x8c), "{reply:?}");
    assert_eq!(f.seen().await, []);
    f.proxy.stop().await;
}

// ---------- 3. HTTP/2 ----------

/// What an HTTP/2 request may not carry (RFC 9113 §8.2.2 connection-specific fields, §8.2.1
/// field names and values, §8.3 pseudo-headers) is refused by the HTTP/2 layer itself, before
/// the proxy turns anything into an HTTP/1.1 request for Node: a PROTOCOL_ERROR, as
/// RST_STREAM for a well-formed field the request may not carry (connection-specific fields,
/// `te`, pseudo-header order and count, a `:path` that is no path), or as GOAWAY when the
/// field itself is invalid (bytes no name or value may hold, an unknown pseudo-header, a
/// `:method` that is no token). This is what stops h2-to-h1 downgrade smuggling (a
/// `transfer-encoding` or a CRLF in a value written into Node's HTTP/1.1 head).
#[tokio::test]
async fn http2_requests_with_forbidden_fields_are_reset_by_the_h2_layer() {
    let f = Fixture::start(|_| {}).await;
    let base: [(&str, &[u8]); 4] = [
        (":method", b"GET"),
        (":scheme", b"https"),
        (":authority", b"localhost"),
        (":path", b"/echo/h2-raw"),
    ];
    let with = |extra: &[(&'static str, &'static [u8])]| {
        let mut fields = base.to_vec();
        fields.extend_from_slice(extra);
        fields
    };
    // Control: the hand-made HPACK is good, so a reset below is about the field, not the block.
    assert_eq!(
        h2_raw(&f.client, &base, None).await,
        H2Reply::Response(0x88)
    );
    assert_eq!(f.seen().await, [Seen::complete("GET", "/echo/h2-raw")]);

    let cases: Vec<(&str, Vec<Field>)> = vec![
        ("connection", with(&[("connection", b"keep-alive")])),
        (
            "transfer-encoding",
            with(&[("transfer-encoding", b"chunked")]),
        ),
        ("keep-alive", with(&[("keep-alive", b"timeout=5")])),
        (
            "proxy-connection",
            with(&[("proxy-connection", b"keep-alive")]),
        ),
        ("upgrade", with(&[("upgrade", b"websocket")])),
        ("te other than trailers", with(&[("te", b"gzip")])),
        (
            "CRLF in a value",
            with(&[("x-a", b"1\r\nTransfer-Encoding: chunked")]),
        ),
        ("LF in a value", with(&[("x-a", b"1\nX-B: 2")])),
        ("NUL in a value", with(&[("x-a", b"1\x002")])),
        ("a space in a name", with(&[("x a", b"1")])),
        ("a colon in a name", with(&[("x:a", b"1")])),
        (
            "a pseudo-header after a regular field",
            vec![
                (":method", b"GET"),
                (":scheme", b"https"),
                ("x-a", b"1"),
                (":authority", b"localhost"),
                (":path", b"/echo/h2-raw"),
            ],
        ),
        ("an unknown pseudo-header", with(&[(":protocol-x", b"1")])),
        ("no :path", base[..3].to_vec()),
        ("two :path", with(&[(":path", b"/echo/h2-other")])),
        (
            ":path with a space and a version",
            vec![
                (":method", b"GET"),
                (":scheme", b"https"),
                (":authority", b"localhost"),
                (":path", b"/echo/h2-raw HTTP/1.1\r\nX-A: 1"),
            ],
        ),
        (
            ":method with a space",
            vec![
                (":method", b"GET /echo/x"),
                (":scheme", b"https"),
                (":authority", b"localhost"),
                (":path", b"/echo/h2-raw"),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, fields) in &cases {
        let reply = h2_raw(&f.client, fields, None).await;
        let seen = f.seen().await;
        let refused = matches!(
            reply,
            H2Reply::Reset(PROTOCOL_ERROR) | H2Reply::GoAway(PROTOCOL_ERROR)
        );
        if !refused || !seen.is_empty() {
            failures.push(format!("{name}: {reply:?}, Node saw {seen:?}"));
        }
    }
    assert_no_failures(failures);
    f.proxy.stop().await;
}

/// H2.CL: an HTTP/2 `content-length` that the DATA frames contradict, carrying an HTTP/1.1
/// request as the "extra" bytes. The HTTP/2 layer resets the stream (RFC 9113 §8.1.1); Node
/// sees at most the declared request, never a complete body longer than declared and never
/// the hidden request.
#[tokio::test]
async fn http2_content_length_mismatch_cannot_smuggle_a_request() {
    let f = Fixture::start(|_| {}).await;
    let hidden = b"hello GET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for declared in [&b"0"[..], b"5"] {
        let fields: Vec<(&str, &[u8])> = vec![
            (":method", b"POST"),
            (":scheme", b"https"),
            (":authority", b"localhost"),
            (":path", b"/echo/h2-cl"),
            ("content-length", declared),
        ];
        let reply = h2_raw(&f.client, &fields, Some(hidden)).await;
        let seen = f.seen().await;
        let declared = lossy(declared);
        assert!(
            matches!(reply, H2Reply::Reset(PROTOCOL_ERROR) | H2Reply::Response(_)),
            "content-length {declared}: {reply:?}"
        );
        assert!(seen.len() <= 1, "content-length {declared}: {seen:?}");
        for s in &seen {
            assert_eq!(s.url, "/echo/h2-cl", "content-length {declared}");
            // A declared empty body may complete (it is the declared request); a declared
            // 5-byte body followed by more data must not.
            if declared != "0" {
                assert_eq!(s.state, "aborted", "content-length {declared}: {seen:?}");
            }
        }
    }
    f.proxy.stop().await;
}

/// RFC 9113 §8.3.1: `Host` naming another authority than `:authority` (sent by a real HTTP/2
/// client) is a 400, and Node never sees it.
#[tokio::test]
async fn http2_host_disagreeing_with_authority_is_a_400() {
    let f = Fixture::start(|_| {}).await;
    let mut h2 = f.client.h2_conn().await;
    for host in ["evil.example", "localhost:1", "localhost.evil.example"] {
        let request = Request::get("https://localhost/echo/h2-host")
            .header("host", host)
            .body(empty())
            .unwrap();
        let response = send_h2(&mut h2, request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{host}");
        assert_eq!(body_json(response).await["error"], "bad_request");
    }
    assert_eq!(f.seen().await, []);
    // The connection is still good for an honest request.
    let response = send_h2(
        &mut h2,
        Request::get("https://localhost/echo/h2-host")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(f.seen().await, [Seen::complete("GET", "/echo/h2-host")]);
    f.proxy.stop().await;
}

// ---------- 4. TLS-level garbage ----------

/// A ClientHello (RFC 5246 §7.4.1.2) offering `version` as the highest, without the
/// supported_versions extension, with TLS 1.2 suites (ECDHE AES-GCM / ChaCha20) and CBC ones.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut body = version.to_vec();
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 10] = [
        0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc009, 0xc013, 0x002f, 0x0035,
    ];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend(suite.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null only
    let mut exts = Vec::new();
    let name = b"localhost";
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    ext(&mut exts, 0x0000, &sni); // server_name
    ext(
        &mut exts,
        0x000a,
        &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    ); // groups
    ext(&mut exts, 0x000b, &[1, 0]); // ec_point_formats
    let algs: [u16; 6] = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501];
    let mut sigs = ((algs.len() * 2) as u16).to_be_bytes().to_vec();
    for a in algs {
        sigs.extend(a.to_be_bytes());
    }
    ext(&mut exts, 0x000d, &sigs); // signature_algorithms
    ext(&mut exts, 0x0017, &[]); // extended_master_secret
    ext(&mut exts, 0xff01, &[0]); // renegotiation_info
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);

    let mut handshake = vec![1]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// What came back on a raw TCP connection to the TLS port.
#[derive(Debug)]
struct TcpReply {
    bytes: Vec<u8>,
    closed: bool,
    took: Duration,
}

impl TcpReply {
    /// The first record's content type and its first payload byte (handshake type, or the
    /// alert level) and second (alert description).
    fn first_record(&self) -> Option<(u8, u8, Option<u8>)> {
        (self.bytes.len() >= 6).then(|| (self.bytes[0], self.bytes[5], self.bytes.get(6).copied()))
    }
}

/// Connects over plain TCP, writes `bytes`, optionally half-closes, and reads until the proxy
/// closes or `wait` passes.
async fn tcp_probe(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    half_close: bool,
    wait: Duration,
) -> TcpReply {
    let started = Instant::now();
    let mut tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let _ = tcp.write_all(bytes).await;
    if half_close {
        let _ = tcp.shutdown().await;
    }
    let mut out = Vec::new();
    let closed = tokio::time::timeout(wait, tcp.read_to_end(&mut out))
        .await
        .is_ok();
    TcpReply {
        bytes: out,
        closed,
        took: started.elapsed(),
    }
}

/// Garbage instead of TLS, a cut-off ClientHello, a ClientHello that offers only TLS 1.0 or
/// 1.1, and plain HTTP on the TLS port: each is refused at the TLS layer (an alert or a close,
/// never an HTTP answer, nothing at Node) and counted in `tls_handshake_failures_total`, while a
/// request in flight on another connection and the requests after it are served normally.
#[tokio::test]
async fn tls_garbage_is_refused_without_disturbing_other_connections() {
    let handshake_timeout = Duration::from_secs(1);
    let f = Fixture::start(|config| {
        config.server.tls_handshake_timeout = PositiveDuration(handshake_timeout);
    })
    .await;
    let addr = f.proxy.addr;
    let failures_before = f
        .proxy
        .handle
        .as_ref()
        .unwrap()
        .metrics()
        .tls_handshake_failures
        .get();

    // A request in flight on its own HTTP/2 connection for the whole test.
    let mut h2 = f.client.h2_conn().await;
    let in_flight = tokio::spawn(async move {
        let request = Request::get("https://localhost/_t/slow?ms=2500")
            .body(empty())
            .unwrap();
        let response = send_h2(&mut h2, request).await;
        (response.status(), body_json(response).await)
    });

    // Control: the hand-made TLS 1.2 ClientHello is good, so the refusals below are about the
    // version, not the message. The proxy answers with a ServerHello (handshake type 2).
    let reply = tcp_probe(
        addr,
        &client_hello([3, 3]),
        false,
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(
        reply.first_record().map(|r| (r.0, r.1)),
        Some((0x16, 2)),
        "TLS 1.2 ClientHello gets a ServerHello: {reply:?}"
    );

    // Only TLS 1.1 or 1.0 offered: a fatal protocol_version alert (70), then the close.
    for (name, version) in [("TLS 1.1", [3, 2]), ("TLS 1.0", [3, 1])] {
        let reply = tcp_probe(addr, &client_hello(version), false, PROBE_WAIT).await;
        assert!(reply.closed, "{name}: {reply:?}");
        assert_eq!(
            reply.first_record(),
            Some((0x15, 2, Some(70))),
            "{name}: fatal protocol_version alert: {reply:?}"
        );
    }

    // Random bytes; a record header announcing 64 KiB; a ClientHello cut in half and the write
    // side closed; plain HTTP. All closed at once.
    let random = xorshift_bytes(0x9e37_79b9, 4096);
    let hello = client_hello([3, 3]);
    let mut huge_record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    huge_record.extend([0u8; 64]);
    let plain_http = b"GET /echo/plain-on-tls HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    for (name, bytes, half_close) in [
        ("random bytes", random, false),
        ("a 64 KiB record header", huge_record, false),
        (
            "half a ClientHello, then EOF",
            hello[..hello.len() / 2].to_vec(),
            true,
        ),
        ("plain HTTP on the TLS port", plain_http, false),
    ] {
        let reply = tcp_probe(addr, &bytes, half_close, PROBE_WAIT).await;
        assert!(reply.closed, "{name}: not closed: {reply:?}");
        assert!(!reply.bytes.starts_with(b"HTTP/"), "{name}: {reply:?}");
        if let Some((kind, ..)) = reply.first_record() {
            assert_eq!(kind, 0x15, "{name}: only an alert may come back: {reply:?}");
        }
    }

    // Half a ClientHello and then silence: closed by `server.tls_handshake_timeout`.
    let reply = tcp_probe(addr, &hello[..hello.len() / 2], false, PROBE_WAIT).await;
    assert!(reply.closed, "stalled handshake: {reply:?}");
    assert!(
        reply.took >= handshake_timeout - Duration::from_millis(100)
            && reply.took < handshake_timeout + Duration::from_secs(2),
        "stalled handshake closed after {:?}",
        reply.took
    );

    // Many garbage connections at once next to an honest request.
    let garbage: Vec<_> = (0..20u8)
        .map(|i| tokio::spawn(async move { tcp_probe(addr, &[i; 512], false, PROBE_WAIT).await }))
        .collect();
    let response = f.client.h1(get("/api/hello")).await;
    assert_eq!(response.status(), StatusCode::OK);
    for probe in garbage {
        assert!(probe.await.unwrap().closed);
    }

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the request in flight finished");
    assert_eq!(body["slept_ms"], 2500);
    let response = f.client.h2(get("https://localhost/api/hello")).await;
    assert_eq!(response.status(), StatusCode::OK, "still serving h2");
    let seen = f.seen().await;
    let urls: Vec<&str> = seen.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(
        urls,
        ["/_t/slow?ms=2500", "/api/hello", "/api/hello"],
        "nothing from the garbage reached Node"
    );
    let failures = f
        .proxy
        .handle
        .as_ref()
        .unwrap()
        .metrics()
        .tls_handshake_failures
        .get()
        - failures_before;
    assert!(
        failures >= 2 + 4 + 1 + 20,
        "every refused handshake is counted, got {failures}"
    );
    f.proxy.stop().await;
}

// ---------- 5. the token route's path ----------

/// Raw spellings of `POST /api/stream/token` that a router behind the proxy could still send
/// to the old unauthenticated handler are answered by the proxy (401 without a session) and
/// never reach Node: a query, a `#fragment`, a `;` parameter (Fastify's router, find-my-way,
/// cuts the path at the first `;` when `useSemicolonDelimiter` is on), absolute-form, single
/// percent-encoding, dot segments, case.
///
/// Spellings no Node router would take for the token route are forwarded unchanged, as every
/// other path is: `/%2561pi/stream/token` is `/%61pi/stream/token` after the one decoding
/// routers do (Express matches the raw path, find-my-way decodes once), and
/// `/api/stream;x/token` is `/api/stream` to a router that cuts at `;`. The proxy matches the
/// same way (`token_route::is_token_path` decodes once), so both sides agree.
#[tokio::test]
async fn token_route_spellings_in_raw_bytes_never_reach_node() {
    let f = Fixture::start(|_| {}).await;
    let request = |target: &str| {
        let body = r#"{"userId":"victim"}"#;
        format!(
            "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let answered_by_the_proxy = [
        "/api/stream/token?x",
        "/api/stream/token?userId=victim",
        "/api/stream/token#x",
        "/api/stream/token;x",
        "/api/stream/token;jsessionid=0123",
        "/API/Stream/Token;x",
        "/api/stream/token/;x",
        "/api/stream/token/",
        "/api/stream/token/.",
        "/api/stream/token%2F",
        "/api/stream/./token",
        "/api/x/../stream/token",
        "/%61pi/stream/token",
        "/api/stream/%74%6F%6B%65%6E",
        "http://evil.example/api/stream/token",
        "https://localhost/api/stream/token;x?y",
    ];
    let mut failures = Vec::new();
    for target in answered_by_the_proxy {
        let (exchange, seen) = f.probe(request(target).as_bytes()).await;
        let code = exchange.response().map(|r| r.json()["error"].clone());
        if exchange.status() != Some(401) || !seen.is_empty() {
            failures.push(format!(
                "{target}: status {:?} {code:?}, Node saw {seen:?}",
                exchange.status()
            ));
        }
    }
    // The same over HTTP/2.
    let mut h2 = f.client.h2_conn().await;
    for path in [
        "/api/stream/token;x",
        "/api/stream/token?x",
        "/%61pi/stream/token",
    ] {
        let request = Request::post(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(full(r#"{"userId":"victim"}"#))
            .unwrap();
        let response = send_h2(&mut h2, request).await;
        let seen = f.seen().await;
        if response.status() != StatusCode::UNAUTHORIZED || !seen.is_empty() {
            failures.push(format!(
                "h2 {path}: status {}, Node saw {seen:?}",
                response.status()
            ));
        }
    }
    assert_no_failures(failures);

    for target in [
        "/%2561pi/stream/token",
        "/api/stream;x/token",
        "/api/stream/tokens",
    ] {
        let (exchange, seen) = f.probe(request(target).as_bytes()).await;
        let response = exchange.response().expect("a response");
        assert_eq!(response.status, 200, "{target}: {}", response.status_line);
        assert_eq!(response.json()["url"], target, "{target}: byte for byte");
        assert_eq!(seen, [Seen::complete("POST", target)], "{target}");
    }
    f.proxy.stop().await;
}
