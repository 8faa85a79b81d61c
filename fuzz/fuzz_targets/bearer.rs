//! `auth::credentials` over header maps built from arbitrary bytes.
//!
//! Input: byte 0 is flags (bit 0: `auth.session_cookie`); the rest is split on `\n` (never valid
//! in a header value) into header values, each piece's first byte choosing `Authorization`
//! (odd) or `Cookie` (even). Checked: no panic; the answer agrees with a word-based model of
//! `Bearer <token>`; a token is always a slice of the header it came from; and, from the same
//! bytes, a well-formed `Bearer` spelling and a well-formed `__session` cookie are accepted.
#![no_main]

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use stream_token_proxy::testing::{AuthError, credentials};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let session_cookie = flags & 1 == 1;
    raw(rest, session_cookie);
    structured(rest);
});

fn within(token: &str, value: &HeaderValue) -> bool {
    let v = value.as_bytes().as_ptr_range();
    let t = token.as_bytes().as_ptr_range();
    v.start <= t.start && t.end <= v.end
}

fn raw(rest: &[u8], session_cookie: bool) {
    let mut headers = HeaderMap::new();
    for piece in rest.split(|b| *b == b'\n') {
        let Some((&which, value)) = piece.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = if which & 1 == 1 {
            AUTHORIZATION
        } else {
            COOKIE
        };
        headers.append(name, value);
    }
    let result = credentials(&headers, session_cookie);
    if let Err(e) = &result {
        assert!(!e.code().is_empty());
    }
    let authorizations: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    match authorizations.as_slice() {
        [] => match result {
            Ok(token) => {
                assert!(
                    session_cookie,
                    "a cookie was used while session_cookie is off"
                );
                assert!(!token.is_empty() && token == token.trim() && !token.contains(';'));
                assert!(
                    headers.get_all(COOKIE).iter().any(|v| within(token, v)),
                    "the token is not from a Cookie header"
                );
            }
            Err(e) => assert_eq!(e, AuthError::MissingCredentials),
        },
        [value] => {
            // Model: after trimming, exactly two blank-separated words, `bearer` (any case)
            // and a token without a comma.
            let expected = value.to_str().ok().and_then(|v| {
                let words: Vec<&str> = v.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
                match words.as_slice() {
                    [scheme, token]
                        if scheme.eq_ignore_ascii_case("bearer") && !token.contains(',') =>
                    {
                        Some(*token)
                    }
                    _ => None,
                }
            });
            match (result, expected) {
                (Ok(token), Some(model)) => {
                    assert_eq!(token, model);
                    assert!(within(token, value), "the token is not from the header");
                }
                (Err(AuthError::InvalidAuthorization(_)), None) => {}
                (got, model) => panic!("credentials = {got:?}, model = {model:?} for {value:?}"),
            }
        }
        _ => assert!(
            matches!(result, Err(AuthError::InvalidAuthorization(_))),
            "several Authorization headers gave {result:?}"
        ),
    }
}

/// A well-formed spelling derived from the input must always be accepted.
fn structured(rest: &[u8]) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let (knobs, body) = rest.split_at(rest.len().min(4));
    let knob = |i: usize| knobs.get(i).copied().unwrap_or(0);
    let mut token: String = body
        .iter()
        .take(2048)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    if token.is_empty() {
        token.push_str("a.b.c");
    }
    let blank = |bits: u8, n: u8| -> String {
        (0..n)
            .map(|i| if bits >> i & 1 == 1 { '\t' } else { ' ' })
            .collect()
    };
    let scheme: String = "bearer"
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if knob(0) >> i & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let value = format!(
        "{}{scheme}{}{token}{}",
        blank(knob(1), knob(1) % 3),
        blank(knob(2), 1 + knob(2) % 3),
        blank(knob(3), knob(3) % 3),
    );
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
    headers.insert(COOKIE, HeaderValue::from_static("__session=not.this.one"));
    for cookie in [false, true] {
        assert_eq!(
            credentials(&headers, cookie),
            Ok(token.as_str()),
            "{value:?}"
        );
    }

    let mut headers = HeaderMap::new();
    let cookie = format!("theme=dark; __session={token}; other=1");
    headers.insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
    assert_eq!(credentials(&headers, true), Ok(token.as_str()));
    assert_eq!(
        credentials(&headers, false),
        Err(AuthError::MissingCredentials)
    );
}
