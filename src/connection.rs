//! One client connection as requests see it: its facts ([`ClientConn`]), what it holds while
//! it is open ([`ConnectionSlot`]), and how busy it is.
//!
//! A [`ConnectionSlot`] is the connection's place under `server.max_connections`, under
//! `server.max_connections_per_ip`, in the `open_connections` gauge and in its worker's drain.
//! It is released when its last holder drops it: the connection's task, or the WebSocket tunnel
//! the connection became (a tunnel is an open connection until it closes). It also counts the
//! requests in flight, so the server can close a connection that has been idle too long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::metrics::Metrics;

/// The facts about a client connection that requests need (where it comes from, whether it
/// came over TLS), copied into each request.
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    pub peer: std::net::SocketAddr,
    /// `true` when the client reached us over TLS (sets `X-Forwarded-Proto`).
    pub tls: bool,
}

pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    _per_ip: PerIpGuard,
    /// The worker's drain waits until every token is dropped.
    _drain: TaskTrackerToken,
    metrics: Arc<Metrics>,
    opened: Instant,
    in_flight: AtomicUsize,
    requested: AtomicBool,
    /// The connection speaks HTTP/2 (hyper times idle HTTP/1 connections itself).
    http2: AtomicBool,
    /// When the last request in flight finished, in milliseconds after `opened`.
    idle_since_ms: AtomicU64,
    /// The server is draining: HTTP/1 responses from now on close their connection.
    draining: AtomicBool,
}

/// Whether a connection has been quiet for too long, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idleness {
    /// A request is in flight, or the connection has not been quiet that long yet.
    Busy,
    /// No request arrived within the first-request timeout.
    NeverRequested,
    /// No request in flight for the idle timeout.
    Idle,
}

impl ConnectionSlot {
    pub(crate) fn new(
        permit: OwnedSemaphorePermit,
        per_ip: PerIpGuard,
        drain: TaskTrackerToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.open_connections.inc();
        Self {
            _permit: permit,
            _per_ip: per_ip,
            _drain: drain,
            metrics,
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// The server began its drain: responses from now on say `Connection: close` (HTTP/1,
    /// see [`InFlight::draining`]). Returns whether the connection speaks HTTP/2.
    pub(crate) fn start_draining(&self) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        self.http2.load(Ordering::Relaxed)
    }

    /// A request arrived; it is in flight until the returned guard is dropped (with the
    /// response body, see [`TrackedBody`]).
    pub(crate) fn request_started(self: &Arc<Self>, version: http::Version) -> InFlight {
        // `http2` first (defensive: today only the connection's own task reads these): whoever
        // sees `requested` must not take an HTTP/2 connection for HTTP/1 (`timed_by_hyper`).
        if version == http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.requested.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The connection became a WebSocket tunnel: it stays open (and counted) until the
    /// returned guard is dropped.
    pub(crate) fn tunnel(self: Arc<Self>) -> Tunnel {
        self.metrics.open_tunnels.inc();
        Tunnel(self)
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Judges the connection against its timeouts now; also returns how long until it is
    /// worth asking again, or `None` once hyper times the connection itself: an HTTP/1
    /// connection that has made a request is closed by hyper's `header_read_timeout` while it
    /// waits for the next head (and a timer per connection would cost every request work in
    /// tokio's timer wheel: BENCHMARKS.md, "Hostile clients").
    pub(crate) fn idleness(
        &self,
        first_request: Duration,
        idle: Duration,
    ) -> (Idleness, Option<Duration>) {
        if self.timed_by_hyper() {
            return (Idleness::Busy, None);
        }
        let requested = self.requested.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return (Idleness::Busy, Some(idle));
        }
        let (quiet, limit, verdict) = if requested {
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
            (
                self.opened.elapsed().saturating_sub(since),
                idle,
                Idleness::Idle,
            )
        } else {
            (
                self.opened.elapsed(),
                first_request,
                Idleness::NeverRequested,
            )
        };
        match limit.checked_sub(quiet) {
            // No sooner than `idle` from now: a request may start and finish meanwhile, and
            // the connection is then judged by `idle` (so closed within two of them).
            Some(left) if !left.is_zero() => (Idleness::Busy, Some(left.min(idle))),
            _ => (verdict, Some(idle)),
        }
    }

    /// An HTTP/1 connection that has made a request: hyper's `header_read_timeout` times it
    /// from then on (see [`idleness`](Self::idleness)).
    pub(crate) fn timed_by_hyper(&self) -> bool {
        self.requested.load(Ordering::Acquire) && !self.http2.load(Ordering::Relaxed)
    }

    fn request_finished(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(now, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
    }
}

/// A request in flight on its connection.
pub(crate) struct InFlight(Arc<ConnectionSlot>);

impl InFlight {
    /// Whether the server is draining (its response should close the connection).
    pub(crate) fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A WebSocket tunnel's hold on its connection's slot.
pub(crate) struct Tunnel(Arc<ConnectionSlot>);

impl Tunnel {
    /// The tunnel is being closed for silence (`upstream.tunnel_idle_timeout`).
    pub(crate) fn closing_idle(&self) {
        self.0.metrics.connection_closed("tunnel_idle");
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.0.metrics.open_tunnels.dec();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is finished or dropped.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self { inner, in_flight }
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Open connections per client address (`server.max_connections_per_ip`), across workers.
/// IPv6 clients count by /64: one host usually holds a whole /64.
pub(crate) struct PerIpConnections {
    cap: usize,
    open: Mutex<HashMap<IpKey, usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6Prefix64(u64),
}

impl IpKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6Prefix64((u128::from(v6) >> 64) as u64),
        }
    }
}

/// One connection's count under its address; gives it back when dropped.
pub(crate) struct PerIpGuard(Option<(Arc<PerIpConnections>, IpKey)>);

impl PerIpConnections {
    /// `cap` connections per address at most; 0 = no limit.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`, or `None` when that address is at its cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpGuard> {
        if self.cap == 0 {
            return Some(PerIpGuard(None));
        }
        let key = IpKey::of(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PerIpGuard(Some((self.clone(), key))))
    }

    fn release(&self, key: IpKey) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        if let Some((owner, key)) = self.0.take() {
            owner.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_cap_and_give_back() {
        let limits = Arc::new(PerIpConnections::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "a third from the same address");
        assert!(limits.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(limits.admit(a).is_some(), "a slot came back");
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let limits = Arc::new(PerIpConnections::new(1));
        let _one = limits.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            limits
                .admit("2001:db8:1:2::ffff".parse().unwrap())
                .is_none()
        );
        assert!(limits.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = limits.admit("198.51.100.7".parse().unwrap()).unwrap();
        assert!(
            limits
                .admit("::ffff:198.51.100.7".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn no_cap_never_locks_or_refuses() {
        let limits = Arc::new(PerIpConnections::new(0));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..100).map(|_| limits.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
        assert!(limits.open.lock().unwrap().is_empty());
    }
}
