//! No client, authenticated or not, makes the proxy hold more than a small, configured amount of
//! memory, file descriptors or connection slots (issue 14): HTTP/2 clients that never read
//! with the largest window, HTTP/1.1 clients that never read, idle HTTP/2 connections,
//! WebSocket tunnels, a token-route body that never comes.
//!
//! Memory is measured on the real binary (`/proc/<pid>/status`), with the real Node upstream
//! streaming large downloads behind it.

mod common;

use std::time::{Duration, Instant};

use common::admin::{metric, metric_settles};
use common::binary::*;
use common::fake_upstream::FakeUpstream;
use common::h2raw::*;
use common::*;
use tokio::io::AsyncWriteExt;

/// What one HTTP/2 connection that never reads may cost at most (README, "Resource bounds":
/// 32 streams x (16 KiB stream buffer + 16 KiB upstream buffers + the exchange); measured
/// ~2.5 MiB).
const H2_BOUND_MIB: f64 = 4.0;
/// The same for one HTTP/1.1 connection (measured ~45 KiB).
const H1_BOUND_KIB: f64 = 96.0;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Waits (bounded) until the process's RSS has not grown for half a second: the buffers it
/// fills for clients that never read are full.
async fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = proc_kib(pid, "VmRSS");
    let mut stable_since = Instant::now();
    while Instant::now() < deadline && stable_since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = proc_kib(pid, "VmRSS");
        if now > last {
            last = now;
            stable_since = Instant::now();
        }
    }
    last
}

/// Numbers from the environment, so `bench/hostile-memory.sh` can run the same loads bigger.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `HOSTILE_REPORT_ONLY=1`: print the figures without judging them (the benchmark measures an
/// older build with these tests too).
fn report_only() -> bool {
    std::env::var_os("HOSTILE_REPORT_ONLY").is_some()
}

/// Warm-up: a few requests, so the growth measured is the hostile load's alone.
async fn warm_up(client: &TlsClient) {
    for _ in 0..20 {
        let response = client.h1(get("/api/hello")).await;
        body_bytes(response).await;
    }
}

#[tokio::test]
async fn http2_clients_that_never_read_cost_a_bounded_amount_of_memory() {
    let upstream = NodeUpstream::start();
    let served = Served::start(&upstream.url(), "[log]\nlevel = \"warn\"\n").await;
    let client = served.client();
    let pid = served.child.0.id();
    warm_up(&client).await;
    let conns = knob("HOSTILE_H2_CONNS", 8);
    let streams = knob("HOSTILE_H2_STREAMS", 128);
    let bytes = knob("HOSTILE_BYTES", 1_000_000);
    let before = proc_kib(pid, "VmRSS");
    let path = std::env::var("HOSTILE_PATH").unwrap_or(format!("/_t/download?bytes={bytes}"));
    let paths: Vec<String> = (0..streams).map(|_| path.clone()).collect();
    let mut held = Vec::new();
    for _ in 0..conns {
        held.push(h2_never_reading(&client, &paths).await);
    }
    let loaded = settled_rss(pid).await;
    drop(held);
    let growth_mib = (loaded.saturating_sub(before)) as f64 / 1024.0;
    let per_conn = growth_mib / conns as f64;
    eprintln!(
        "h2 never reading: {conns} conns x {streams} streams of {path}: RSS {before} -> \
         {loaded} KiB (+{growth_mib:.1} MiB, {per_conn:.2} MiB per connection), peak {} KiB",
        proc_kib(pid, "VmHWM")
    );
    // Before the bound: ~69 MiB per connection (400 KiB per stream, 128 streams).
    assert!(
        report_only() || per_conn <= H2_BOUND_MIB,
        "{per_conn:.1} MiB per connection, over {H2_BOUND_MIB} MiB"
    );
}

#[tokio::test]
async fn http1_clients_that_never_read_cost_a_bounded_amount_of_memory() {
    let upstream = NodeUpstream::start();
    let served = Served::start(&upstream.url(), "[log]\nlevel = \"warn\"\n").await;
    let client = served.client();
    let pid = served.child.0.id();
    warm_up(&client).await;
    let conns = knob("HOSTILE_H1_CONNS", 256);
    let bytes = knob("HOSTILE_BYTES", 1_000_000);
    let before = proc_kib(pid, "VmRSS");
    let mut held = Vec::new();
    for _ in 0..conns {
        let mut stream = client.connect(&[b"http/1.1"]).await;
        let request = format!("GET /_t/download?bytes={bytes} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        held.push(stream);
    }
    let loaded = settled_rss(pid).await;
    drop(held);
    let growth_mib = (loaded.saturating_sub(before)) as f64 / 1024.0;
    let per_conn_kib = growth_mib * 1024.0 / conns as f64;
    eprintln!(
        "h1 never reading: {conns} conns x {bytes} B: RSS {before} -> {loaded} KiB \
         (+{growth_mib:.1} MiB, {per_conn_kib:.1} KiB per connection)"
    );
    assert!(
        report_only() || per_conn_kib <= H1_BOUND_KIB,
        "{per_conn_kib:.0} KiB per connection, over {H1_BOUND_KIB} KiB"
    );
}

#[tokio::test]
async fn idle_http2_connections_are_closed_so_they_cannot_lock_others_out() {
    let upstream = FakeUpstream::start().await;
    let proxy = TestProxy::start(&upstream.url(), |c| {
        c.server.max_connections = 5;
        c.server.idle_timeout = stream_token_proxy::config::PositiveDuration::secs(1);
    })
    .await;
    let client = proxy.client();
    // Five clients make one request each, then only answer pings (hyper's client does).
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut h2 = client.h2_conn().await;
        let hello = http::Request::get("https://localhost/api/hello")
            .body(empty())
            .unwrap();
        assert_eq!(send_h2(&mut h2, hello).await.status(), 200);
        idle.push(h2);
    }
    let started = Instant::now();
    let sixth = tokio::time::timeout(Duration::from_secs(5), client.h1_conn()).await;
    assert!(sixth.is_ok(), "a sixth client was locked out");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "let in only after {waited:?}"
    );
    // The idle ones were sent away (GOAWAY), not left hanging.
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle.iter().any(|h2| !h2.is_closed()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = idle.iter().filter(|h2| !h2.is_closed()).count();
    assert_eq!(open, 0, "idle connections stayed open");
    assert!(
        metric(
            &proxy,
            "stream_token_proxy_connection_closes_total{reason=\"idle\"}"
        ) >= 5.0
    );
    proxy.stop().await;
}

/// Opens a WebSocket tunnel to the upstream's echo through the proxy.
async fn open_tunnel(
    client: &TlsClient,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let stream = client.connect(&[b"http/1.1"]).await;
    let (ws, response) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async("wss://localhost/_t/ws", stream),
    )
    .await
    .expect("WebSocket handshake in time")
    .expect("WebSocket handshake");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws
}

#[tokio::test]
async fn websocket_tunnels_keep_their_connection_slot_until_they_close() {
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |c| c.server.max_connections = 3).await;
    let client = proxy.client();
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(open_tunnel(&client).await);
    }
    let gauge = |name: &str| metric(&proxy, &format!("stream_token_proxy_{name} "));
    assert_eq!(gauge("open_connections"), 3.0);
    assert_eq!(gauge("open_tunnels"), 3.0);
    // A fourth client waits in the listen backlog while the three tunnels hold every slot.
    let fourth = {
        let client = proxy.client();
        tokio::spawn(async move { client.h1_conn().await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !fourth.is_finished(),
        "a fourth connection got in past max_connections = 3"
    );
    let mut first = tunnels.remove(0);
    first.close(None).await.expect("close frame");
    drop(first);
    let fourth = tokio::time::timeout(STEP, fourth).await;
    assert!(fourth.is_ok(), "the fourth client never got the freed slot");
    drop(tunnels);
    proxy.stop().await;
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_after_the_tunnel_idle_timeout() {
    use futures_util::StreamExt as _;
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |c| {
        c.upstream.tunnel_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut ws = open_tunnel(&proxy.client()).await;
    let started = Instant::now();
    let end = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("closed in time");
    assert!(
        !matches!(end, Some(Ok(_))),
        "a frame instead of the close: {end:?}"
    );
    let after = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&after),
        "closed after {after:?}"
    );
    assert_eq!(
        metric(
            &proxy,
            "stream_token_proxy_connection_closes_total{reason=\"tunnel_idle\"}"
        ),
        1.0
    );
    let open = metric_settles(&proxy, "stream_token_proxy_open_tunnels ", 0.0).await;
    assert_eq!(open, 0.0, "the closed tunnel still counts");
    proxy.stop().await;
}

#[tokio::test]
async fn a_token_route_body_that_never_comes_gets_408_and_a_close() {
    use tokio::io::AsyncReadExt;
    let upstream = FakeUpstream::start().await;
    let key = clerk::ClerkKey::generate("k1");
    let proxy = TestProxy::start(&upstream.url(), |c| {
        clerk::use_pem(c, &key.public_pem);
        c.server.header_read_timeout = stream_token_proxy::config::PositiveDuration::secs(1);
    })
    .await;
    let token = key.sign(&clerk::claims("user_stalled"));
    let mut stream = proxy.client().connect(&[b"http/1.1"]).await;
    let head = format!(
        "POST /api/stream/token HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"userId\""
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(STEP, stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection stayed open");
    let response = RawResponse::parse(&answer);
    assert_eq!(response.status, 408, "{}", response.status_line);
    assert_eq!(response.json()["error"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    proxy.stop().await;
}

#[tokio::test]
async fn connections_past_the_per_ip_cap_are_closed_at_once() {
    let upstream = FakeUpstream::start().await;
    let proxy = TestProxy::start(&upstream.url(), |c| c.server.max_connections_per_ip = 2).await;
    let client = proxy.client();
    let mut first = client.h1_conn().await;
    let _second = client.h1_conn().await;
    let third = client.try_connect(&[b"http/1.1"]).await;
    assert!(
        third.is_err(),
        "a third connection from 127.0.0.1 was served"
    );
    assert_eq!(
        metric(
            &proxy,
            "stream_token_proxy_connection_closes_total{reason=\"per_ip_limit\"}"
        ),
        1.0
    );
    // The two admitted ones still work, and a slot given back is usable again.
    assert_eq!(send_h1(&mut first, get("/api/hello")).await.status(), 200);
    drop(first);
    let deadline = Instant::now() + STEP;
    let again = loop {
        match client.try_connect(&[b"http/1.1"]).await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed slot never came back: {e}"),
        }
    };
    drop(again);
    proxy.stop().await;
}
