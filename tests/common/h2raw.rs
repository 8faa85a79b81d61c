//! HTTP/2 spoken by hand: frames and HPACK literals built from raw bytes, for requests a real
//! client library refuses to send (RFC 9113, RFC 7541).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TlsClient;

/// How long [`h2_raw`] waits for the proxy to answer stream 1.
pub const H2_WAIT: Duration = Duration::from_secs(5);

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const H2_DATA: u8 = 0x0;
pub const H2_HEADERS: u8 = 0x1;
pub const H2_RST_STREAM: u8 = 0x3;
pub const H2_SETTINGS: u8 = 0x4;
pub const H2_GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PROTOCOL_ERROR: u32 = 0x1;

/// One HTTP/2 field as raw bytes: (name, value).
pub type Field = (&'static str, &'static [u8]);

pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// An HPACK string length (7-bit prefix, no Huffman), RFC 7541 §5.1.
pub fn hpack_length(out: &mut Vec<u8>, len: usize) {
    if len < 127 {
        out.push(len as u8);
        return;
    }
    out.push(127);
    let mut rest = len - 127;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Every field as a literal without indexing, new name, no Huffman (RFC 7541 §6.2.2): any
/// bytes at all, which is the point (a real client library refuses to send most of these).
pub fn hpack_block(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_length(&mut out, name.len());
        out.extend(name.as_bytes());
        hpack_length(&mut out, value.len());
        out.extend(*value);
    }
    out
}

/// How the proxy's HTTP/2 layer answered stream 1.
#[derive(Debug, PartialEq)]
pub enum H2Reply {
    Reset(u32),
    /// A response HEADERS frame (its first HPACK byte: 0x88 is `:status 200`).
    Response(u8),
    GoAway(u32),
    Closed,
    Silent,
}

/// Opens an HTTP/2 connection, sends one request built from raw `fields` (and `data`, if any,
/// as one DATA frame ending the stream), and reads frames until stream 1 is answered.
pub async fn h2_raw(client: &TlsClient, fields: &[(&str, &[u8])], data: Option<&[u8]>) -> H2Reply {
    let mut stream = client.connect(&[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    let flags = END_HEADERS | if data.is_none() { END_STREAM } else { 0 };
    out.extend(h2_frame(H2_HEADERS, flags, 1, &hpack_block(fields)));
    if let Some(data) = data {
        out.extend(h2_frame(H2_DATA, END_STREAM, 1, data));
    }
    stream.write_all(&out).await.expect("h2 write");
    let deadline = tokio::time::Instant::now() + H2_WAIT;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut head)).await {
            Err(_) => return H2Reply::Silent,
            Ok(Err(_)) => return H2Reply::Closed,
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if tokio::time::timeout_at(deadline, stream.read_exact(&mut payload))
            .await
            .map_or(true, |r| r.is_err())
        {
            return H2Reply::Closed;
        }
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let code = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
        match (head[3], id) {
            (H2_RST_STREAM, 1) => return H2Reply::Reset(code(0)),
            (H2_HEADERS, 1) => return H2Reply::Response(payload.first().copied().unwrap_or(0)),
            (H2_GOAWAY, _) => return H2Reply::GoAway(code(4)),
            (H2_SETTINGS, 0) if head[4] & 0x1 == 0 => {
                let _ = stream.write_all(&h2_frame(H2_SETTINGS, 0x1, 0, &[])).await;
            }
            _ => {}
        }
    }
}

pub const H2_WINDOW_UPDATE: u8 = 0x8;
/// SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 §6.5.2).
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Opens an HTTP/2 connection that gives the proxy the largest flow-control window there is
/// (SETTINGS for every stream, WINDOW_UPDATE for the connection), sends a GET for each of
/// `paths` on streams 1, 3, 5, ... and returns the connection unread: a client that makes the
/// proxy hold whatever it has to send. Drop it to leave.
pub async fn h2_never_reading(
    client: &TlsClient,
    paths: &[String],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut stream = client.connect(&[b"h2"]).await;
    let mut out = H2_PREFACE.to_vec();
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(MAX_WINDOW.to_be_bytes());
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &settings));
    let connection_increment = MAX_WINDOW - 65_535;
    out.extend(h2_frame(
        H2_WINDOW_UPDATE,
        0,
        0,
        &connection_increment.to_be_bytes(),
    ));
    for (i, path) in paths.iter().enumerate() {
        let fields: [(&str, &[u8]); 4] = [
            (":method", b"GET"),
            (":scheme", b"https"),
            (":authority", b"localhost"),
            (":path", path.as_bytes()),
        ];
        let id = 1 + 2 * i as u32;
        out.extend(h2_frame(
            H2_HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &hpack_block(&fields),
        ));
    }
    stream.write_all(&out).await.expect("h2 write");
    stream.flush().await.expect("h2 flush");
    stream
}
