//! An in-process upstream (hyper, no Node) for tests where Node adds nothing: route logic,
//! limits, connection handling. It answers like the Node upstream's defaults: `GET /api/hello`
//! with `{"message":"hello"}`, anything else with an echo of what arrived (`method`, `url`,
//! `rawHeaders` as name/value pairs, `bodyBytes`), and counts the requests it saw. The real
//! Node upstream (`tests/upstream/server.js`) stays for the transparency and conformance tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub struct FakeUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = counted.clone();
                let service = service_fn(move |request| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    answer(request)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen since start.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = if request.uri().path() == "/api/hello" {
        serde_json::json!({ "message": "hello" })
    } else {
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let headers: Vec<String> = parts
            .headers
            .iter()
            .flat_map(|(name, value)| {
                [
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ]
            })
            .collect();
        serde_json::json!({
            "method": parts.method.as_str(),
            "url": parts.uri.to_string(),
            "rawHeaders": headers,
            "bodyBytes": bytes,
        })
    };
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("valid"));
    Ok(response)
}
