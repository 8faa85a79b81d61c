//! The token route's pure parts over arbitrary bytes: `parse_token_body` + `check_body_user`
//! (the old route's `{"userId": ...}` body), and `is_token_path` (every spelling of
//! `/api/stream/token` a framework behind the proxy might route to the old handler).
//!
//! Checked, besides no panic / hang:
//! - body: `Ok(None)` exactly for all-whitespace input; `Ok(Some)` exactly when the bytes are a
//!   JSON object (serde_json's `Value` as the model); `check_body_user` lets through an absent or
//!   null `userId` or the session's own id, answers `user_mismatch` for another string and
//!   `bad_request` for any other type;
//! - path: the answer does not change with ASCII case, with a trailing `/` appended, or with
//!   `\` read as `/`; a path starting with `//` or `/\` is never the token route (it is
//!   refused); the exact spellings `/api/stream/token` (any case, trailing slash) are always
//!   caught; for paths without `%`, `.`, `;` and `\` a plain segment model agrees; and
//!   spellings generated from the input (case, `%XX` with either hex case, extra slashes, `\`,
//!   `./` and `seg/../`) of the token path are always caught.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stream_token_proxy::testing::Session;
use stream_token_proxy::testing::ProxyError;
use stream_token_proxy::testing::{check_body_user, is_token_path, parse_token_body};

const USER: &str = "user_2abc";

fuzz_target!(|data: &[u8]| {
    body(data);
    let path = String::from_utf8_lossy(data);
    path_invariants(&path);
    generated_spelling(data);
});

fn body(data: &[u8]) {
    let session = Session {
        user_id: Arc::from(USER),
        expires_at: 1_700_000_000,
        ..Session::default()
    };
    let parsed = parse_token_body(data);
    let model: Option<Value> = serde_json::from_slice(data).ok();
    match &parsed {
        Ok(None) => assert!(data.iter().all(u8::is_ascii_whitespace)),
        Ok(Some(map)) => {
            assert_eq!(model.as_ref().and_then(Value::as_object), Some(map));
        }
        Err(ProxyError::BadRequest(_)) => {
            assert!(!data.iter().all(u8::is_ascii_whitespace));
            assert!(!model.as_ref().is_some_and(Value::is_object));
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
    let Ok(body) = parsed else { return };
    let checked = check_body_user(body.as_ref(), &session);
    match body.as_ref().and_then(|b| b.get("userId")) {
        None | Some(Value::Null) => assert!(checked.is_ok()),
        Some(Value::String(id)) if id == USER => assert!(checked.is_ok()),
        Some(Value::String(_)) => match checked {
            Err(ProxyError::UserMismatch { user_id }) => assert_eq!(&*user_id, USER),
            other => panic!("another user's id gave {other:?}"),
        },
        Some(_) => assert!(matches!(checked, Err(ProxyError::BadRequest(_)))),
    }
}

fn path_invariants(path: &str) {
    let caught = is_token_path(path);
    assert_eq!(
        caught,
        is_token_path(&path.to_ascii_lowercase()),
        "{path:?}"
    );
    assert_eq!(
        caught,
        is_token_path(&path.to_ascii_uppercase()),
        "{path:?}"
    );
    assert_eq!(caught, is_token_path(&format!("{path}/")), "{path:?}");
    if ambiguous(path) {
        assert!(!caught, "{path:?} starts like an authority");
        return;
    }
    let slashes = path.replace('\\', "/");
    if !ambiguous(&slashes) {
        assert_eq!(caught, is_token_path(&slashes), "{path:?}");
    }
    let lower = path.to_ascii_lowercase();
    if lower == "/api/stream/token" || lower == "/api/stream/token/" {
        assert!(caught, "{path:?}");
    }
    if !path.contains(['%', '.', ';', '\\']) {
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        assert_eq!(caught, segments == ["api", "stream", "token"], "{path:?}");
    }
}

/// `//` or `/\` first: refused by the proxy, whatever follows.
fn ambiguous(path: &str) -> bool {
    path.starts_with("//") || path.starts_with("/\\")
}

/// Builds a spelling of `/api/stream/token` from the input bytes; it must be caught.
fn generated_spelling(data: &[u8]) {
    let mut knobs = data.iter().copied().chain(std::iter::repeat(0));
    let mut path = String::new();
    for segment in ["api", "stream", "token"] {
        let k = knobs.next().unwrap();
        // one to three slashes or backslashes (never two first: that is refused), sometimes
        // a `./` or `x/../`
        path.push('/');
        if !path.is_empty() && path != "/" {
            for _ in 0..k % 3 {
                path.push(if k & 0x40 == 0 { '/' } else { '\\' });
            }
        }
        match k >> 2 & 3 {
            1 => path.push_str("./"),
            2 => path.push_str("junk/../"),
            3 => path.push_str("%2E/"),
            _ => {}
        }
        for c in segment.chars() {
            let k = knobs.next().unwrap();
            match k & 3 {
                0 => path.push(c),
                1 => path.push(c.to_ascii_uppercase()),
                2 => path.push_str(&format!("%{:02x}", c as u8)),
                _ => path.push_str(&format!("%{:02X}", c.to_ascii_uppercase() as u8)),
            }
        }
    }
    if knobs.next().unwrap() & 1 == 1 {
        path.push('/');
    }
    assert!(is_token_path(&path), "{path:?} was not caught");
    let path = path.replacen('/', "%2F", 2).replacen("%2F", "/", 1);
    assert!(is_token_path(&path), "{path:?} was not caught");
}
