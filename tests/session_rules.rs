//! Only a live Clerk session of a user gets a Stream token (issue 15): every other kind of
//! token Clerk signs with the same instance key is refused at the real route, with its status
//! and error code, and so are pending sessions, JWS `crit` and an issuer that differs in any
//! byte. All tokens here carry a good signature from the instance's own key.

mod common;

use common::clerk::*;
use http::StatusCode;
use serde_json::{Value, json};

const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;

/// Each case: what, the token, the expected status and code (`""` for a 200).
async fn check(client: &common::TlsClient, cases: Vec<(&str, String, StatusCode, &str)>) {
    for (what, token, status, code) in cases {
        let got = answer(client, &token).await;
        assert_eq!(got, (status, code.to_string()), "{what}");
    }
}

#[tokio::test]
async fn clerks_other_token_types_are_refused() {
    let f = fixture(|_| {}).await;
    let key = &f.key;
    let session = claims("user_types");
    let header = |changes: &[(&str, Value)]| key.sign_with_header(changes, &session);
    let claims_without = |name: &str| key.sign(&claims_with("user_types", &[(name, Value::Null)]));
    let cases = vec![
        (
            "Clerk's session header",
            key.sign(&session),
            StatusCode::OK,
            "",
        ),
        (
            "no cat, no typ (tokens from before Clerk added them)",
            header(&[("cat", Value::Null), ("typ", Value::Null)]),
            StatusCode::OK,
            "",
        ),
        (
            "typ in lower case",
            header(&[("typ", json!("jwt"))]),
            StatusCode::OK,
            "",
        ),
        (
            "the ignore category",
            header(&[("cat", json!(CAT_IGNORE))]),
            StatusCode::OK,
            "",
        ),
        (
            "OAuth access token (typ at+jwt)",
            header(&[("typ", json!("at+jwt"))]),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "typ application/at+jwt",
            header(&[("typ", json!("application/at+jwt"))]),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "JWT template category",
            header(&[("cat", json!(CAT_TEMPLATE))]),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "M2M category",
            header(&[("cat", json!(CAT_M2M))]),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "unknown category",
            header(&[("cat", json!("cl_Z9z9ZZ999ZZZ"))]),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "the session category in another case",
            header(&[("cat", json!(CAT_SESSION.to_lowercase()))]),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "no sid (a JWT template token)",
            claims_without("sid"),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "empty sid",
            key.sign(&claims_with("user_types", &[("sid", json!(""))])),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "sid not a string",
            key.sign(&claims_with("user_types", &[("sid", json!(12))])),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            "machine subject (M2M token)",
            key.sign(&claims("mch_2abcMachine")),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
        (
            // A template token is refused as such even when it has expired too.
            "template token, also expired",
            key.sign_with_header(
                &[("cat", json!(CAT_TEMPLATE))],
                &claims_with("user_types", &[("exp", json!(now() - 3600))]),
            ),
            UNAUTHORIZED,
            "wrong_token_type",
        ),
    ];
    let refused = cases.iter().filter(|c| c.3 == "wrong_token_type").count();
    check(&f.proxy.client(), cases).await;

    // Its own reason in verification_failures_total.
    let metrics = f.proxy.handle.as_ref().unwrap().metrics().encode();
    let line = metrics
        .lines()
        .find(|l| l.contains("reason=\"wrong_token_type\""))
        .unwrap_or_else(|| panic!("no wrong_token_type label in\n{metrics}"));
    assert!(line.ends_with(&format!(" {refused}")), "{refused}: {line}");
}

#[tokio::test]
async fn pending_sessions_are_refused_unless_allowed() {
    let f = fixture(|_| {}).await;
    let sts = |value: Value| f.key.sign(&claims_with("user_sts", &[("sts", value)]));
    let cases = vec![
        ("sts active", sts(json!("active")), StatusCode::OK, ""),
        (
            "sts absent (version-1 claims)",
            sts(Value::Null),
            StatusCode::OK,
            "",
        ),
        (
            "sts pending",
            sts(json!("pending")),
            UNAUTHORIZED,
            "session_pending",
        ),
        (
            "sts unknown",
            sts(json!("abandoned")),
            UNAUTHORIZED,
            "malformed_token",
        ),
    ];
    check(&f.proxy.client(), cases).await;

    let allowing = fixture(|c| c.auth.accept_pending_sessions = true).await;
    let pending = allowing
        .key
        .sign(&claims_with("user_sts", &[("sts", json!("pending"))]));
    let cases = vec![
        ("sts pending, allowed", pending, StatusCode::OK, ""),
        (
            "still only pending and active",
            allowing
                .key
                .sign(&claims_with("user_sts", &[("sts", json!("abandoned"))])),
            UNAUTHORIZED,
            "malformed_token",
        ),
    ];
    check(&allowing.proxy.client(), cases).await;
}

#[tokio::test]
async fn a_crit_header_is_refused() {
    let f = fixture(|_| {}).await;
    let session = claims("user_crit");
    let crit = |value: Value| f.key.sign_with_header(&[("crit", value)], &session);
    let cases = vec![
        (
            "crit [\"exp\"]",
            crit(json!(["exp"])),
            UNAUTHORIZED,
            "malformed_token",
        ),
        // RFC 7797: `b64: false` would change what the signature covers.
        (
            "crit [\"b64\"]",
            {
                let mut header = f.key.session_header();
                header["b64"] = json!(false);
                header["crit"] = json!(["b64"]);
                f.key.sign_header(&header, &session)
            },
            UNAUTHORIZED,
            "malformed_token",
        ),
        ("crit []", crit(json!([])), UNAUTHORIZED, "malformed_token"),
        (
            "crit null",
            {
                let mut header = f.key.session_header();
                header["crit"] = Value::Null;
                f.key.sign_header(&header, &session)
            },
            UNAUTHORIZED,
            "malformed_token",
        ),
    ];
    check(&f.proxy.client(), cases).await;
}

#[tokio::test]
async fn the_issuer_is_compared_byte_for_byte() {
    let f = fixture(|_| {}).await;
    let iss = |value: &str| {
        f.key
            .sign(&claims_with("user_iss", &[("iss", json!(value))]))
    };
    let cases = vec![
        ("exact", iss(ISSUER), StatusCode::OK, ""),
        (
            "a trailing slash",
            iss(&format!("{ISSUER}/")),
            UNAUTHORIZED,
            "wrong_issuer",
        ),
        (
            "upper case",
            iss(&ISSUER.to_uppercase()),
            UNAUTHORIZED,
            "wrong_issuer",
        ),
        (
            "host in another case",
            iss(&ISSUER.replace("clerk.test", "Clerk.Test")),
            UNAUTHORIZED,
            "wrong_issuer",
        ),
        (
            "a trailing space",
            iss(&format!("{ISSUER} ")),
            UNAUTHORIZED,
            "wrong_issuer",
        ),
    ];
    check(&f.proxy.client(), cases).await;

    // And the other way round: a configured issuer with a slash no longer matches Clerk's.
    let slash = fixture(|c| c.auth.issuer = Some(format!("{ISSUER}/"))).await;
    assert_eq!(
        answer(&slash.proxy.client(), &slash.key.sign(&claims("user_iss"))).await,
        (UNAUTHORIZED, "wrong_issuer".to_string())
    );
}
