//! The admin listener, asked the way Prometheus and the kubelet ask it: plain HTTP/1.1 GETs,
//! the OpenMetrics exposition parsed, single samples read out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

use super::{STEP, TestProxy, body_bytes, empty};

pub type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// GET over plain HTTP/1.1 to the admin listener: (status, content-type, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin listener");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "admin")
        .body(empty())
        .unwrap();
    let response = tokio::time::timeout(STEP, send.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
    (status, content_type, body)
}

pub async fn scrape(addr: SocketAddr) -> Exposition {
    let (status, content_type, body) = admin_get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("/metrics does not parse as OpenMetrics: {e:?}\n{body}"))
}

/// The value of one sample (counters and gauges; histograms give their count).
pub fn value(metrics: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(family) = metrics.families.get(family) else {
        return 0.0;
    };
    family
        .iter_samples()
        .find(|sample| {
            let set = sample.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|sample| match &sample.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            other => panic!("unexpected value {other:?}"),
        })
        .unwrap_or(0.0)
}

/// The proxy's admin address (the test config always enables the listener).
pub fn admin_addr(proxy: &TestProxy) -> SocketAddr {
    proxy
        .handle
        .as_ref()
        .expect("running")
        .admin_addr()
        .expect("admin listener on")
}

/// `/metrics` as text, over the admin listener.
pub async fn metrics_text(proxy: &TestProxy) -> String {
    admin_get(admin_addr(proxy), "/metrics").await.2
}

/// One sample of the in-process proxy's registry by its line (`name{labels} ` up to the value),
/// 0 when absent: quick to read for a test that only counts.
pub fn metric(proxy: &TestProxy, line_start: &str) -> f64 {
    let text = proxy.handle.as_ref().expect("running").metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until [`metric`] reads `want`; returns what it read last.
pub async fn metric_settles(proxy: &TestProxy, line_start: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(proxy, line_start);
        if now == want || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
