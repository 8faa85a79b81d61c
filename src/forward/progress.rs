//! A streamed request body on its way upstream, and when it last moved: the response timeout of
//! an upload counts from its last body frame, so a slow uploader is not blamed on the upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// When a streamed request body last moved (a frame or its end was taken from the client), and
/// whether reading it from the client failed.
#[derive(Clone)]
pub(super) struct Progress {
    origin: Instant,
    /// Nanoseconds after `origin`.
    last: Arc<AtomicU64>,
    client_failed: Arc<AtomicBool>,
}

impl Progress {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            client_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    pub(super) fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// The client's request body on its way upstream, recording [`Progress`].
pub(crate) struct ProgressBody {
    inner: Incoming,
    progress: Progress,
}

impl ProgressBody {
    pub(super) fn new(inner: Incoming, progress: Progress) -> Self {
        Self { inner, progress }
    }
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_)) | None) => self.progress.touch(),
            Poll::Ready(Some(Err(_))) => self.progress.client_failed.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
