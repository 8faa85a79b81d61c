//! OTLP protobuf, written by hand for the few messages the proxy sends: one
//! `ExportTraceServiceRequest` holding one `ResourceSpans` (`service.name`) with one
//! `ScopeSpans` of the batch's spans (opentelemetry-proto, `trace/v1/trace.proto`). Field
//! numbers are the `.proto`'s; the unit tests decode the output with the generated types.
//!
//! Protobuf wire format: every field is a key (`field << 3 | wire type`, varint) and a value:
//! a varint, eight little-endian bytes (fixed64), or a length-prefixed byte string (strings,
//! bytes and nested messages). A nested message's length comes before it, so a span is
//! written to a scratch buffer first; the small attribute messages have lengths worked out
//! in advance instead.

use super::{SpanKind, SpanRecord};
use crate::fast_format::push_ip;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
/// `Status.code` ERROR.
const STATUS_ERROR: u64 = 2;
/// `InstrumentationScope.name`.
const SCOPE_NAME: &str = "stream-token-proxy";

/// Appends the export request for `spans` to `out`; `scratch` is working space. Each span
/// is written to `scratch` once and copied once; the outer messages' lengths are worked out
/// from their contents, so the spans are not copied again for each level of nesting.
pub(super) fn encode_export(
    service_name: &str,
    spans: &[SpanRecord],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    // ScopeSpans.spans (= 2), after ScopeSpans.scope (= 1): name 1, version 2.
    let version = env!("CARGO_PKG_VERSION");
    let scope_len = field_len(SCOPE_NAME.len()) + field_len(version.len());
    let mut scope_spans = std::mem::take(scratch);
    scope_spans.clear();
    key(&mut scope_spans, 1, LEN);
    varint(&mut scope_spans, scope_len as u64);
    string(&mut scope_spans, 1, SCOPE_NAME);
    string(&mut scope_spans, 2, version);
    let mut span = Vec::with_capacity(256);
    for record in spans {
        span.clear();
        encode_span(record, &mut span);
        bytes(&mut scope_spans, 2, &span);
    }
    // Resource: attributes = 1, one `service.name`.
    let attribute_len = field_len("service.name".len()) + field_len(field_len(service_name.len()));
    let resource_len = field_len(attribute_len);
    // ExportTraceServiceRequest.resource_spans (= 1): ResourceSpans { resource = 1,
    // scope_spans = 2 }.
    let resource_spans_len = field_len(resource_len) + field_len(scope_spans.len());
    out.reserve(resource_spans_len + 8);
    key(out, 1, LEN);
    varint(out, resource_spans_len as u64);
    key(out, 1, LEN);
    varint(out, resource_len as u64);
    string_attribute(out, 1, "service.name", service_name);
    bytes(out, 2, &scope_spans);
    *scratch = scope_spans;
}

/// `Span`: ids 1, 2 and 4 (no parent: left out), name 5, kind 6, start and end 7 and 8 (unix
/// nanoseconds), attributes 9, status 15.
fn encode_span(span: &SpanRecord, out: &mut Vec<u8>) {
    bytes(out, 1, &span.trace_id);
    bytes(out, 2, &span.span_id);
    if span.parent_id != [0; 8] {
        bytes(out, 4, &span.parent_id);
    }
    string(out, 5, span.name);
    varint_field(out, 6, span.kind as u64);
    fixed64(out, 7, span.start_ns);
    fixed64(out, 8, span.end_ns);
    if let Some((key, value)) = span.attribute {
        string_attribute(out, 9, key, value);
    }
    if let Some(server) = &span.server {
        debug_assert_eq!(span.kind, SpanKind::Server);
        let mut peer = Vec::with_capacity(39);
        push_ip(&mut peer, server.peer);
        string_attribute(out, 9, "http.request.method", server.method);
        bytes_attribute(out, 9, "network.peer.address", &peer);
        string_attribute(out, 9, "http.route", server.route);
        int_attribute(out, 9, "http.response.status_code", server.status.into());
        if let Some(user) = &server.user_id {
            string_attribute(out, 9, "enduser.id", user);
        }
    }
    if let Some(message) = span.error {
        // Status: message = 2, code = 3.
        let len = field_len(message.len()) + 1 + varint_len(STATUS_ERROR);
        key(out, 15, LEN);
        varint(out, len as u64);
        string(out, 2, message);
        varint_field(out, 3, STATUS_ERROR);
    }
}

/// A `KeyValue` (key = 1, value = 2) whose `AnyValue` is a string (`string_value` = 1).
fn string_attribute(out: &mut Vec<u8>, field: u32, name: &str, value: &str) {
    bytes_attribute(out, field, name, value.as_bytes());
}

/// The same, for a string given as its (UTF-8) bytes.
fn bytes_attribute(out: &mut Vec<u8>, field: u32, name: &str, value: &[u8]) {
    let any = field_len(value.len());
    key(out, field, LEN);
    varint(out, (field_len(name.len()) + field_len(any)) as u64);
    string(out, 1, name);
    key(out, 2, LEN);
    varint(out, any as u64);
    bytes(out, 1, value);
}

/// A `KeyValue` whose `AnyValue` is an `int_value` (= 3, a varint).
fn int_attribute(out: &mut Vec<u8>, field: u32, name: &str, value: u64) {
    let any = 1 + varint_len(value);
    key(out, field, LEN);
    varint(out, (field_len(name.len()) + field_len(any)) as u64);
    string(out, 1, name);
    key(out, 2, LEN);
    varint(out, any as u64);
    varint_field(out, 3, value);
}

/// The encoded size of a length-prefixed field (a one-byte key: fields below 16) holding
/// `len` bytes.
#[inline]
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

#[inline]
fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

#[inline]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, VARINT);
    varint(out, value);
}

#[inline]
fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

#[inline]
fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    use super::super::ServerFields;
    use super::*;

    fn server_span(user_id: Option<&str>, status: u16) -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_id: [9; 8],
            name: "POST",
            kind: SpanKind::Server,
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_000_000_123_456,
            attribute: None,
            server: Some(ServerFields {
                method: "POST",
                peer: "::ffff:10.1.2.3"
                    .parse::<std::net::IpAddr>()
                    .unwrap()
                    .to_canonical(),
                route: "token",
                status,
                user_id: user_id.map(Arc::from),
            }),
            error: (status >= 500).then_some("Bad Gateway"),
        }
    }

    fn child_span() -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: [3; 8],
            parent_id: [0; 8],
            name: "rate limit check",
            kind: SpanKind::Client,
            start_ns: 5,
            end_ns: u64::MAX,
            attribute: Some(("rate_limit.policy", "token_ip")),
            server: None,
            error: Some("backend_unavailable"),
        }
    }

    fn decode(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
        let mut out = b"prefix".to_vec();
        encode_export("proxy-under-test", spans, &mut Vec::new(), &mut out);
        assert_eq!(&out[..6], b"prefix", "appended");
        out.drain(..6);
        ExportTraceServiceRequest::decode(&out[..]).expect("valid protobuf")
    }

    fn attributes(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Vec<(String, Value)> {
        let value = |kv: &opentelemetry_proto::tonic::common::v1::KeyValue| {
            kv.value.as_ref().and_then(|v| v.value.clone()).unwrap()
        };
        span.attributes
            .iter()
            .map(|kv| (kv.key.clone(), value(kv)))
            .collect()
    }

    #[test]
    fn a_batch_decodes_as_the_proto_says() {
        let export = decode(&[server_span(Some("user_1"), 502), child_span()]);
        let [resource_spans] = &export.resource_spans[..] else {
            panic!("one ResourceSpans: {export:?}")
        };
        let resource = resource_spans.resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        let [scope] = &resource_spans.scope_spans[..] else {
            panic!("one ScopeSpans")
        };
        assert_eq!(scope.scope.as_ref().unwrap().name, "stream-token-proxy");
        let [server, child] = &scope.spans[..] else {
            panic!("two spans")
        };
        assert_eq!(server.trace_id, [7; 16]);
        assert_eq!(server.span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(server.parent_span_id, [9; 8]);
        assert_eq!((server.name.as_str(), server.kind), ("POST", 2));
        assert_eq!(server.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(server.end_time_unix_nano, 1_700_000_000_000_123_456);
        assert_eq!(
            attributes(server),
            [
                (
                    "http.request.method".into(),
                    Value::StringValue("POST".into())
                ),
                (
                    "network.peer.address".into(),
                    Value::StringValue("10.1.2.3".into())
                ),
                ("http.route".into(), Value::StringValue("token".into())),
                ("http.response.status_code".into(), Value::IntValue(502)),
                ("enduser.id".into(), Value::StringValue("user_1".into())),
            ]
        );
        let status = server.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "Bad Gateway"));

        assert!(child.parent_span_id.is_empty(), "a root span has no parent");
        assert_eq!((child.kind, child.end_time_unix_nano), (3, u64::MAX));
        assert_eq!(
            attributes(child),
            [(
                "rate_limit.policy".into(),
                Value::StringValue("token_ip".into())
            )]
        );
        assert_eq!(
            child.status.as_ref().unwrap().message,
            "backend_unavailable"
        );
    }

    #[test]
    fn a_span_without_user_or_error_has_neither() {
        let export = decode(&[server_span(None, 200)]);
        let span = &export.resource_spans[0].scope_spans[0].spans[0];
        assert!(span.status.is_none());
        assert!(!attributes(span).iter().any(|(k, _)| k == "enduser.id"));
    }

    #[test]
    fn long_values_get_multi_byte_lengths() {
        let long = "u".repeat(300);
        let leaked: &'static str = Box::leak(long.clone().into_boxed_str());
        let mut span = child_span();
        span.attribute = Some(("rate_limit.policy", leaked));
        let export = decode(&[span]);
        let span = &export.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(attributes(span)[0].1, Value::StringValue(long));
        // And a batch bigger than one length byte.
        let many: Vec<SpanRecord> = (0..200).map(|_| child_span()).collect();
        assert_eq!(
            decode(&many).resource_spans[0].scope_spans[0].spans.len(),
            200
        );
    }

    #[test]
    fn varint_lengths() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
