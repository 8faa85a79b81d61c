//! `/readyz`'s look at the upstream (`admin.ready_requires_upstream`): a TCP connect to
//! `upstream.url`, or a `GET upstream.health_path` answering `2xx`. One check serves every
//! probe for a second, so probes from several places (the kubelet, a load balancer, an
//! operator's curl) cost the upstream one connection a second at most.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::config::UpstreamConfig;

/// How long one check's verdict stands.
const CACHED_FOR: Duration = Duration::from_secs(1);

/// The longest one check may take: a probe must answer before the kubelet gives up on it (its
/// `timeoutSeconds` is 1 by default).
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

pub(crate) struct UpstreamCheck {
    /// `host:port`.
    target: String,
    /// The path to GET, or none for a TCP connect only.
    health_path: Option<String>,
    /// The last verdict and when it was reached. An async lock: probes arriving while a check
    /// runs wait for its verdict instead of starting their own.
    last: Mutex<Option<(Instant, Option<&'static str>)>>,
}

impl UpstreamCheck {
    pub(crate) fn new(config: &UpstreamConfig) -> Self {
        let authority = &config.url.authority;
        let target = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.as_str()),
        };
        Self {
            target,
            health_path: config.health_path.clone(),
            last: Mutex::new(None),
        }
    }

    /// `None` when the upstream passed its check (within the last second), else why not.
    pub(crate) async fn not_ready(&self) -> Option<&'static str> {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = *last
            && at.elapsed() < CACHED_FOR
        {
            return verdict;
        }
        let verdict = match tokio::time::timeout(CHECK_TIMEOUT, self.check()).await {
            Ok(verdict) => verdict,
            Err(_) => Some("the upstream did not answer its readiness check in time"),
        };
        *last = Some((Instant::now(), verdict));
        verdict
    }

    async fn check(&self) -> Option<&'static str> {
        let Ok(stream) = TcpStream::connect(self.target.as_str()).await else {
            return Some("the upstream refuses connections");
        };
        let path = self.health_path.as_deref()?;
        let failed = Some("the upstream's health check failed");
        let Ok((mut send, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
        else {
            return failed;
        };
        let Ok(request) = Request::get(path)
            .header(header::HOST, self.target.as_str())
            .header(header::CONNECTION, "close")
            .body(Empty::new())
        else {
            return failed;
        };
        // The connection is driven here, beside the exchange; `Connection: close` ends both.
        let (answered, _) = tokio::join!(send.send_request(request), conn);
        let answered = answered.ok().filter(|r| r.status().is_success()).map(drop);
        answered.map_or(failed, |()| None)
    }
}
