//! The response body type every handler returns: either the upstream's streamed body, passed
//! through frame by frame (backpressure is hyper's), or a small body the proxy made itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

use crate::error::BoxError;
use crate::forward::UpstreamResponseBody;

#[derive(Debug)]
pub(crate) struct ProxyBody(Either<UpstreamResponseBody, Full<Bytes>>);

impl ProxyBody {
    /// A body the proxy made (JSON answers, errors).
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Self(Either::Right(Full::new(bytes.into())))
    }

    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The upstream's body, streamed through.
    pub(crate) fn upstream(body: UpstreamResponseBody) -> Self {
        Self(Either::Left(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
