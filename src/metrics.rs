//! Prometheus metrics (the `prometheus-client` exporter). Counters on the request path are
//! resolved once at start, so recording is an atomic add, not a label lookup.
//!
//! Labels never carry user ids, tokens, paths or addresses: only the fixed words below.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimiterLabel {
    limiter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    what: &'static str,
    outcome: &'static str,
}

/// The built-in routes, first in [`Metrics::requests`]; the route table's follow.
pub(crate) const ROUTES: [&str; 2] = ["token", "forward"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `tls_handshakes_total{kind}`: a full handshake (certificate signature, key exchange), or
/// one resumed from a TLS 1.3 ticket or the TLS 1.2 session cache.
const HANDSHAKE_KINDS: [&str; 2] = ["full", "resumed"];

pub struct Metrics {
    registry: Registry,
    /// `[route][status class]`.
    /// `[route][status class]`: the built-in routes, then the route table's.
    requests: Vec<[Counter; 5]>,
    pub(crate) token_mints: Counter,
    pub(crate) token_reuses: Counter,
    verification_failures: Family<ReasonLabel, Counter>,
    rate_limited: Family<LimiterLabel, Counter>,
    jwks_fetches: Family<OutcomeLabel, Counter>,
    /// Seconds since the key set in force was fetched (set when scraped).
    pub(crate) jwks_age: Gauge<f64, AtomicU64>,
    pub(crate) jwks_keys: Gauge,
    pub(crate) upstream_duration: Histogram,
    upstream_errors: Family<KindLabel, Counter>,
    pub(crate) open_connections: Gauge,
    /// WebSocket tunnels open now (each also counts in `open_connections`).
    pub(crate) open_tunnels: Gauge,
    connection_closes: Family<ReasonLabel, Counter>,
    pub tls_handshake_failures: Counter,
    /// Completed TLS handshakes, in the order of [`HANDSHAKE_KINDS`].
    tls_handshakes: [Counter; 2],
    /// Spans handed to the OTLP collector, and spans dropped (queue full, export failing).
    pub(crate) trace_spans_exported: Counter,
    pub(crate) trace_spans_dropped: Counter,
    /// `notAfter` of the served certificate, unix seconds.
    pub(crate) certificate_expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    /// Keys held by each rate limiter (set when scraped).
    limiter_keys: Family<LimiterLabel, Gauge>,
    /// Rate-limit checks by what the shared backend did, in the order of [`BackendOutcome`].
    backend_requests: [Counter; 7],
    /// Time of each check that went to the shared backend (Redis).
    pub(crate) backend_duration: Histogram,
    /// 1 while the shared backend is skipped (circuit open, or not reached yet).
    pub(crate) rate_limit_degraded: Gauge,
}

/// What the shared rate-limit backend did for one check (`rate_limit_backend_requests_total`'s
/// `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendOutcome {
    /// Redis counted it, under the limit.
    Allowed,
    /// Redis counted it, over the limit.
    Limited,
    /// Redis did not answer within `limits.redis.timeout`: `on_error` answered.
    Timeout,
    /// Redis failed (connection, authentication, script): `on_error` answered.
    Error,
    /// The circuit is open: Redis was not asked, `on_error` answered.
    Skipped,
    /// Redis said over the limit a moment ago: answered locally, Redis not asked.
    FirstTier,
    /// Allowed from cells this replica reserved in Redis a moment ago (large bursts only).
    Reserved,
}

const BACKEND_OUTCOMES: [&str; 7] = [
    "allowed",
    "limited",
    "timeout",
    "error",
    "skipped",
    "first_tier",
    "reserved",
];

/// Bounds of `rate_limit_backend_duration_seconds`: a loopback or in-zone Redis answers in
/// well under a millisecond; the default timeout is 20 ms.
const BACKEND_BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
];

/// Bounds of `upstream_duration_seconds`, in seconds.
const UPSTREAM_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers `metric` as `name` and returns it (a metric is a shared handle: the registry
/// keeps one, the caller the other).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_routes(std::iter::empty())
    }

    /// With a request counter for each route of the route table too.
    pub(crate) fn with_routes(table: impl Iterator<Item = &'static str>) -> Self {
        let mut registry = Registry::with_prefix("stream_token_proxy");
        let request_family: Family<RequestLabels, Counter> = registered(
            &mut registry,
            "requests",
            "Requests answered, by route and status class",
            Family::default(),
        );
        // Resolved once, so counting a request is an atomic add, not a label lookup.
        let requests = ROUTES
            .into_iter()
            .chain(table)
            .map(|route| {
                STATUS_CLASSES.map(|status| {
                    request_family.get_or_create_owned(&RequestLabels { route, status })
                })
            })
            .collect();
        let backend_family: Family<OutcomeLabel, Counter> = registered(
            &mut registry,
            "rate_limit_backend_requests",
            "Rate-limit checks by what the shared backend (Redis) did",
            Family::default(),
        );
        let backend_requests = BACKEND_OUTCOMES
            .map(|outcome| backend_family.get_or_create_owned(&OutcomeLabel { outcome }));
        let handshake_family: Family<KindLabel, Counter> = registered(
            &mut registry,
            "tls_handshakes",
            "TLS handshakes completed, full or resumed",
            Family::default(),
        );
        let tls_handshakes =
            HANDSHAKE_KINDS.map(|kind| handshake_family.get_or_create_owned(&KindLabel { kind }));
        Self {
            requests,
            backend_requests,
            tls_handshakes,
            backend_duration: registered(
                &mut registry,
                "rate_limit_backend_duration_seconds",
                "Time of each rate-limit check sent to the shared backend (Redis)",
                Histogram::new(BACKEND_BUCKETS),
            ),
            rate_limit_degraded: registered(
                &mut registry,
                "rate_limit_degraded",
                "1 while the shared rate-limit backend is skipped and limits.redis.on_error applies",
                Default::default(),
            ),
            token_mints: registered(
                &mut registry,
                "token_mints",
                "Stream tokens signed",
                Default::default(),
            ),
            token_reuses: registered(
                &mut registry,
                "token_reuses",
                "Stream tokens handed out again from the cache",
                Default::default(),
            ),
            verification_failures: registered(
                &mut registry,
                "verification_failures",
                "Session tokens refused, by reason",
                Default::default(),
            ),
            rate_limited: registered(
                &mut registry,
                "rate_limited",
                "Requests refused by a rate limit",
                Default::default(),
            ),
            jwks_fetches: registered(
                &mut registry,
                "jwks_fetches",
                "JWKS fetches, by outcome",
                Default::default(),
            ),
            jwks_age: registered(
                &mut registry,
                "jwks_age_seconds",
                "Age of the verification key set in force",
                Default::default(),
            ),
            jwks_keys: registered(
                &mut registry,
                "jwks_keys",
                "Verification keys in force",
                Default::default(),
            ),
            // The unit is in the name rather than registered: some OpenMetrics parsers refuse
            // units on histograms.
            upstream_duration: registered(
                &mut registry,
                "upstream_duration_seconds",
                "Time until the upstream's response headers",
                Histogram::new(UPSTREAM_BUCKETS),
            ),
            upstream_errors: registered(
                &mut registry,
                "upstream_errors",
                "Forwarded requests that failed at the upstream, by kind",
                Default::default(),
            ),
            open_connections: registered(
                &mut registry,
                "open_connections",
                "Client connections open now",
                Default::default(),
            ),
            open_tunnels: registered(
                &mut registry,
                "open_tunnels",
                "WebSocket tunnels open now (each also an open connection)",
                Default::default(),
            ),
            connection_closes: registered(
                &mut registry,
                "connection_closes",
                "Client connections the proxy closed or refused to bound its resources, by reason",
                Default::default(),
            ),
            trace_spans_exported: registered(
                &mut registry,
                "trace_spans_exported",
                "Spans handed to the OTLP collector",
                Default::default(),
            ),
            trace_spans_dropped: registered(
                &mut registry,
                "trace_spans_dropped",
                "Spans dropped: the export queue was full or the collector failing",
                Default::default(),
            ),
            tls_handshake_failures: registered(
                &mut registry,
                "tls_handshake_failures",
                "TLS handshakes that failed or timed out",
                Default::default(),
            ),
            certificate_expiry: registered(
                &mut registry,
                "certificate_expiry_timestamp_seconds",
                "notAfter of the served TLS certificate, as unix time",
                Default::default(),
            ),
            reloads: registered(
                &mut registry,
                "reloads",
                "Certificate and secret reloads, by what and outcome",
                Default::default(),
            ),
            limiter_keys: registered(
                &mut registry,
                "limiter_keys",
                "Keys held by each rate limiter",
                Default::default(),
            ),
            registry,
        }
    }

    /// Counts a finished request. `route` is an index into [`ROUTES`], then the route table.
    pub(crate) fn request(&self, route: usize, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        if let Some(row) = self.requests.get(route) {
            row[class].inc();
        }
    }

    /// `reason` is the refusal's error code (`AuthError::code`: `bad_signature`,
    /// `wrong_token_type`, `session_pending`, ...), one fixed word per kind of refusal.
    pub fn verification_failure(&self, reason: &'static str) {
        self.verification_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn rate_limited(&self, limiter: &'static str) {
        self.rate_limited
            .get_or_create(&LimiterLabel { limiter })
            .inc();
    }

    pub fn jwks_fetch(&self, outcome: &'static str) {
        self.jwks_fetches
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// A TLS handshake completed; `resumed` when it skipped the certificate.
    pub(crate) fn tls_handshake(&self, resumed: bool) {
        self.tls_handshakes[usize::from(resumed)].inc();
    }

    /// A connection closed (or refused) for `reason`: `idle`, `no_request`, `per_ip_limit`,
    /// `tunnel_idle`.
    pub fn connection_closed(&self, reason: &'static str) {
        self.connection_closes
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn reload(&self, what: &'static str, outcome: &'static str) {
        self.reloads
            .get_or_create(&ReloadLabels { what, outcome })
            .inc();
    }

    pub(crate) fn backend_request(&self, outcome: BackendOutcome) {
        self.backend_requests[outcome as usize].inc();
    }

    pub fn limiter_keys(&self, limiter: &'static str, keys: usize) {
        self.limiter_keys
            .get_or_create(&LimiterLabel { limiter })
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
