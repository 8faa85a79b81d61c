//! The router: which path goes where. It owns no route logic: it gives each request its
//! context (request id, access-log entry), picks the route (the token route for every spelling
//! of its path, `path.rs`), turns a handler's error into its response (through
//! [`ProxyError::to_response`], the only place that happens), counts and logs it, and attaches
//! the access log.

pub(crate) mod body;
mod cors;
pub(crate) mod path;
mod protected;
mod request_id;
pub(crate) mod table;
pub(crate) mod token;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::auth::{KeyStore, Verifier};
use crate::config::{Config, ForwardingConfig, IdentityConfig, UpstreamConfig};
use crate::connection::{ClientConn, ConnectionSlot};
use crate::error::{Fault, ProxyError};
use crate::forward::Forwarder;
use crate::limits::{LimitKey, Limited, Limits};
use crate::metrics::{Metrics, ROUTES};
use crate::ops::access_log::{AccessEntry, LoggedBody};
use crate::ops::traces::{RequestTrace, Traces};
use crate::routes::body::ProxyBody;
use crate::routes::path::{AmbiguousPath, RoutePath};
use crate::routes::protected::IdentityHeaders;
use crate::routes::request_id::{RequestIds, X_REQUEST_ID};
use crate::routes::table::RouteTable;
use crate::routes::token::{TOKEN_PATH, TokenRoute};
use crate::stream_token::StreamMinter;

/// Everything a request may need, shared by all connections.
/// One per worker thread: the upstream pool is the worker's own (no cross-thread hand-offs on
/// the forwarding path); everything else is shared.
pub(crate) struct App {
    forwarder: Forwarder,
    shared: Arc<Shared>,
}

/// What every worker's [`App`] shares.
pub(crate) struct Shared {
    token: TokenRoute,
    traces: Traces,
    table: RouteTable,
    /// The headers that hand Node the verified identity.
    identity: IdentityConfig,
    /// `auth.session_cookie`: Clerk's `__session` cookie counts as credentials.
    session_cookie: bool,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    request_ids: RequestIds,
    /// For each worker's own [`Forwarder`].
    upstream: UpstreamConfig,
    forwarding: ForwardingConfig,
}

impl Shared {
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn new(
        config: &Config,
        table: RouteTable,
        traces: Traces,
        keys: &Arc<KeyStore>,
        minter: &Arc<StreamMinter>,
        limits: &Arc<Limits>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Self> {
        let mut verifier = Verifier::new(&config.auth, keys.clone());
        if config.identity.claims_header.is_some() && !table.is_empty() {
            verifier = verifier.keeping_claims();
        }
        // Anti-spoofing: whatever the route, a client's copies of the identity headers never
        // reach Node.
        let mut forwarding = config.forwarding.clone();
        for name in config.identity.header_names() {
            if !forwarding.remove_request_headers.contains(name) {
                forwarding.remove_request_headers.push(name.clone());
            }
        }
        Arc::new(Self {
            token: TokenRoute::new(
                config,
                verifier,
                minter.clone(),
                limits.clone(),
                metrics.clone(),
            ),
            table,
            traces,
            identity: config.identity.clone(),
            session_cookie: config.auth.session_cookie,
            limits: limits.clone(),
            metrics: metrics.clone(),
            request_ids: RequestIds::default(),
            upstream: config.upstream.clone(),
            forwarding,
        })
    }
}

impl App {
    /// One worker's app: the shared state and the worker's own upstream pool.
    pub(crate) fn new(shared: &Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            forwarder: Forwarder::new(&shared.upstream, &shared.forwarding),
            shared: shared.clone(),
        })
    }
}

/// One request as every stage of the router sees it: where it came from, its id, its
/// access-log entry (Pingora's per-request context).
struct RequestContext {
    conn: ClientConn,
    slot: Arc<ConnectionSlot>,
    request_id: HeaderValue,
    entry: Option<AccessEntry>,
    /// The request's trace, when it is recorded (`ops/traces.rs`).
    trace: RequestTrace,
    /// HTTP/1 (a refused request's unread body can close the connection).
    http1: bool,
}

/// Where a request goes.
#[derive(Clone, Copy)]
enum Route {
    /// `POST /api/stream/token`, answered here.
    Token,
    /// Forwarded without auth (no entry of the route table matched).
    Forward,
    /// An entry of the route table.
    Table(usize),
}

impl Route {
    /// Its row in the request metrics: the built-in routes (`metrics::ROUTES`), then the table.
    fn index(self) -> usize {
        match self {
            Self::Token => 0,
            Self::Forward => 1,
            Self::Table(i) => ROUTES.len() + i,
        }
    }
}

impl App {
    /// Answers one request. Never fails: every error is a response (the `Result` is the shape
    /// hyper's service wants).
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        conn: ClientConn,
        slot: Arc<ConnectionSlot>,
    ) -> Result<Response<LoggedBody<ProxyBody>>, Infallible> {
        let mut ctx = self.begin(&mut request, conn, slot);
        let route = match RoutePath::parse(request.uri().path()) {
            Ok(path) if path.is(TOKEN_PATH) => Route::Token,
            Ok(path) => match self.shared.table.find(&path, request.method()) {
                Some((i, _)) => Route::Table(i),
                None => Route::Forward,
            },
            Err(AmbiguousPath) => {
                let refused = self.respond(Err(ProxyError::AmbiguousPath), &mut ctx);
                return Ok(self.finish(Route::Forward, refused, ctx));
            }
        };
        if let Some(e) = ctx.entry.as_mut() {
            e.route = self.route_name(route);
        }
        let response = match route {
            Route::Token => self.token_route(request, &mut ctx).await,
            Route::Forward => self.forward_route(request, &mut ctx, &Vec::new()).await,
            Route::Table(i) => match self.shared.table.get(i) {
                Some(entry) => self.table_route(request, entry, &mut ctx).await,
                None => self.forward_route(request, &mut ctx, &Vec::new()).await,
            },
        };
        Ok(self.finish(route, response, ctx))
    }

    #[inline]
    fn begin(
        &self,
        request: &mut Request<Incoming>,
        conn: ClientConn,
        slot: Arc<ConnectionSlot>,
    ) -> RequestContext {
        let started = Instant::now();
        let request_id = self.shared.request_ids.assign(request.headers_mut());
        let (method, headers) = (request.method().clone(), request.headers_mut());
        let trace = self.shared.traces.begin(headers, &method, conn.peer);
        let mut entry = AccessEntry::start(request.method(), request.uri().path(), started);
        if let Some(e) = entry.as_mut() {
            e.request_id = Some(request_id.clone());
            e.trace = trace.ids();
        }
        RequestContext {
            conn,
            slot,
            request_id,
            entry,
            trace,
            http1: request.version() < Version::HTTP_2,
        }
    }

    /// `POST /api/stream/token`, answered here, with CORS for browsers.
    async fn token_route(
        &self,
        request: Request<Incoming>,
        ctx: &mut RequestContext,
    ) -> Response<ProxyBody> {
        let token = &self.shared.token;
        let origin = token.cors.allowed_origin(request.headers());
        let preflight = request.method() == Method::OPTIONS;
        let client_ip = self.client_ip(&request, ctx);
        let result = token
            .handle(request, client_ip, &mut ctx.entry, &ctx.trace)
            .await;
        let mut response = self.respond(result, ctx);
        if !preflight {
            token.cors.decorate(&mut response, origin);
        }
        // What is left of a body that never came cannot be told from the next request.
        if ctx.http1 && response.status() == StatusCode::REQUEST_TIMEOUT {
            close_after(&mut response);
        }
        response
    }

    /// The name the metrics and the access log give `route`.
    fn route_name(&self, route: Route) -> &'static str {
        match route {
            Route::Table(i) => self.shared.table.get(i).map_or("forward", |r| r.name),
            builtin => ROUTES[builtin.index()],
        }
    }

    /// Everything else goes to Node (with `identity` added, for a route that verified a
    /// session), unless it is `CONNECT` or over a `[[limits.forward]]`.
    async fn forward_route(
        &self,
        request: Request<Incoming>,
        ctx: &mut RequestContext,
        identity: &IdentityHeaders,
    ) -> Response<ProxyBody> {
        if request.method() == Method::CONNECT {
            return self.respond(Err(ProxyError::NotImplemented("CONNECT")), ctx);
        }
        if let Err(limited) = self.check_forward_limit(&request, ctx).await {
            return self.respond(Err(ProxyError::RateLimited(limited)), ctx);
        }
        // A refused HTTP/1 request may leave body bytes unread, framed in a way the proxy just
        // refused (a transfer coding it cannot undo, a broken chunk): they must never be read
        // as the client's next request, so the connection closes after the answer.
        let close_if_refused = ctx.http1 && !request.body().is_end_stream();
        let mut request = request;
        let _upstream_span = ctx.trace.upstream(request.headers_mut());
        let forwarded = self
            .forwarder
            .forward(request, ctx.conn, ctx.slot.clone(), identity)
            .await;
        let result = forwarded.map(|forwarded| {
            let upstream_time = forwarded.upstream_time;
            self.shared
                .metrics
                .upstream_duration
                .observe(upstream_time.as_secs_f64());
            if let Some(e) = ctx.entry.as_mut() {
                e.upstream_time = Some(upstream_time);
            }
            forwarded.response.map(ProxyBody::upstream)
        });
        let refused = result.is_err();
        let mut response = self.respond(result, ctx);
        if refused && close_if_refused {
            close_after(&mut response);
        }
        response
    }

    /// Per-IP limits on forwarded paths (`[[limits.forward]]`), when configured (none by
    /// default).
    async fn check_forward_limit(
        &self,
        request: &Request<Incoming>,
        ctx: &RequestContext,
    ) -> Result<(), Limited> {
        let table = &self.shared.table;
        if !table.has_forward_limits() {
            return Ok(());
        }
        // An ambiguous path never gets here: `handle` refused it.
        let Ok(path) = RoutePath::parse(request.uri().path()) else {
            return Ok(());
        };
        match table.forward_limit(&path) {
            Some(policy) => {
                let ip = LimitKey::ip(self.client_ip(request, ctx));
                crate::ops::traces::scoped_await!(ctx.trace, self.shared.limits.check(policy, &ip))
            }
            None => Ok(()),
        }
    }

    /// The address rate limits count (`Limits::client_ip`: the peer, or `X-Forwarded-For`
    /// behind a trusted proxy).
    fn client_ip(&self, request: &Request<Incoming>, ctx: &RequestContext) -> std::net::IpAddr {
        self.shared
            .limits
            .client_ip(ctx.conn.peer.ip(), request.headers())
    }

    /// The response for a handler's result; errors are counted and logged here with their
    /// reason, the only place an error becomes a response.
    #[inline]
    fn respond(
        &self,
        result: Result<Response<ProxyBody>, ProxyError>,
        ctx: &mut RequestContext,
    ) -> Response<ProxyBody> {
        let error = match result {
            Ok(response) => return response,
            Err(error) => error,
        };
        count_error(&self.shared.metrics, &error);
        log_error(&error, ctx);
        if let Some(e) = ctx.entry.as_mut() {
            e.error = Some(error.code());
        }
        error.to_response().map(ProxyBody::full)
    }

    /// Counts the answer, gives it its request id and its access-log line.
    #[inline]
    fn finish(
        &self,
        route: Route,
        mut response: Response<ProxyBody>,
        mut ctx: RequestContext,
    ) -> Response<LoggedBody<ProxyBody>> {
        self.shared
            .metrics
            .request(route.index(), response.status());
        ctx.trace.finish(self.route_name(route), response.status());
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), ctx.request_id);
        if let Some(e) = ctx.entry.as_mut() {
            e.status = response.status();
        }
        response.map(|body| LoggedBody::new(body, ctx.entry))
    }
}

/// `Connection: close` on an HTTP/1 answer: the connection ends after it.
fn close_after(response: &mut Response<ProxyBody>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

fn count_error(metrics: &Metrics, error: &ProxyError) {
    match error {
        ProxyError::Auth(e) => metrics.verification_failure(e.code()),
        ProxyError::RateLimited(limited) => metrics.rate_limited(limited.limiter),
        ProxyError::UpstreamConnect(_) => metrics.upstream_error("connect"),
        ProxyError::UpstreamTimeout(_) => metrics.upstream_error("timeout"),
        ProxyError::UpstreamProtocol(_) => metrics.upstream_error("protocol"),
        _ => {}
    }
}

/// Refusing a client is routine (info); the upstream or the proxy failing is not (warn).
fn log_error(error: &ProxyError, ctx: &RequestContext) {
    let user_id = ctx.entry.as_ref().and_then(|e| e.user_id.clone());
    let user_id = user_id.as_deref().or(match error {
        ProxyError::Auth(crate::auth::AuthError::UnauthorizedParty { user_id }) => {
            Some(user_id.as_str())
        }
        _ => None,
    });
    let peer = ctx.conn.peer;
    if error.fault() == Fault::Client {
        info!(code = error.code(), reason = %error, %peer, user_id, "request refused");
    } else {
        warn!(code = error.code(), reason = %error, fault = error.fault().as_str(), %peer, "request failed");
    }
}
