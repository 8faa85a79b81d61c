//! Request ids: the client's `X-Request-Id` when it is sane, else one the proxy makes, written
//! into the request (so Node sees the same id) and the response, and logged.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

use crate::fast_format::push_hex;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: the client's `X-Request-Id` when it is sane, else `<process prefix>-<counter>`.
pub(crate) struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut bytes = [0u8; 6];
        // A zero prefix (if the RNG failed) still gives ids unique within this process.
        let _ = crate::crypto::random_bytes(&mut bytes);
        Self {
            prefix: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The id for this request, written into its headers so the upstream sees the same one.
    pub(crate) fn assign(&self, headers: &mut HeaderMap) -> HeaderValue {
        // One hashed lookup whether the client sent an id or not.
        match headers.entry(&X_REQUEST_ID) {
            Entry::Occupied(mut sent) => {
                let mut values = sent.iter();
                if let (Some(id), None) = (values.next(), values.next())
                    && is_sane_request_id(id.as_bytes())
                {
                    return id.clone();
                }
                // Replaces every line the client sent.
                let id = self.generate();
                sent.insert(id.clone());
                id
            }
            Entry::Vacant(missing) => missing.insert(self.generate()).clone(),
        }
    }

    /// `<prefix>-<n in hex>`.
    fn generate(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = Vec::with_capacity(self.prefix.len() + 17);
        text.extend_from_slice(self.prefix.as_bytes());
        text.push(b'-');
        push_hex(&mut text, n);
        HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// At most 128 bytes of `[A-Za-z0-9._:-]`: safe to log and to pass on.
fn is_sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_prefix_dash_hex_counter() {
        let ids = RequestIds {
            prefix: "0a1b2c3d4e5f".into(),
            next: AtomicU64::new(0),
        };
        for expected in ["0", "1", "2"] {
            let mut headers = HeaderMap::new();
            let id = ids.assign(&mut headers);
            assert_eq!(id, format!("0a1b2c3d4e5f-{expected}").as_str());
            assert_eq!(headers[&X_REQUEST_ID], id);
        }
        for n in [15u64, 16, 0xabc, u64::MAX] {
            ids.next.store(n, Ordering::Relaxed);
            let id = ids.assign(&mut HeaderMap::new());
            assert_eq!(id, format!("0a1b2c3d4e5f-{n:x}").as_str());
        }
    }

    #[test]
    fn a_sane_client_id_is_kept_and_anything_else_replaced_by_one_line() {
        let ids = RequestIds {
            prefix: "p".into(),
            next: AtomicU64::new(7),
        };
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("client-id.1:a_b"));
        assert_eq!(ids.assign(&mut headers), "client-id.1:a_b");
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);

        for sent in [&["two", "lines"][..], &["spaces are not sane"], &[""]] {
            let mut headers = HeaderMap::new();
            for value in sent {
                headers.append(&X_REQUEST_ID, HeaderValue::from_static(value));
            }
            let id = ids.assign(&mut headers);
            assert!(id.to_str().unwrap().starts_with("p-"), "{sent:?}: {id:?}");
            let lines: Vec<_> = headers.get_all(&X_REQUEST_ID).iter().collect();
            assert_eq!(lines, [id], "{sent:?}");
        }
    }
}
