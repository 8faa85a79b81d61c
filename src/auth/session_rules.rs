//! What makes a JWT signed by the Clerk instance a live user session.
//!
//! Clerk signs session tokens, JWT-template tokens, machine-to-machine (M2M) tokens, OAuth
//! access tokens and handshake tokens with the same instance key, so a good signature only
//! says "Clerk made this". These rules say "and it is a user's session": the JOSE `typ` and
//! Clerk's `cat` header, a `sid` claim, a user (not machine) `sub`, and the session status
//! `sts`. Nothing here is an HTTP answer: the errors map to responses in `error.rs`.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::AuthError;

/// Clerk's `cat` (token category) for session tokens. Handshake tokens carry it too; they
/// name no session, so the `sid` rule refuses them.
pub(crate) const CATEGORY_SESSION: &str = "cl_B7d4PD111AAA";
/// The category instances with "ignore JWT category" stamp on every kind of token: it says
/// nothing about the kind, so the other rules decide.
pub(crate) const CATEGORY_IGNORE: &str = "cl_I7d4PD111III";
/// Clerk machine ids, the `sub` of M2M tokens.
const MACHINE_ID_PREFIX: &str = "mch_";

/// A JSON member as sent: absent, or present with any value, `null` included. (`Option<T>`
/// cannot tell `"crit": null` from no `crit`, and RFC 7515 §4.1.11 is about presence.)
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) enum Member {
    #[default]
    Absent,
    Present(Value),
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Member::Present)
    }
}

impl Member {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Member::Present(Value::String(s)) => Some(s),
            _ => None,
        }
    }
}

impl Member {
    /// A string member of an object member (`o.id`).
    pub(super) fn field(&self, name: &str) -> Option<&str> {
        match self {
            Member::Present(Value::Object(map)) => map.get(name).and_then(Value::as_str),
            _ => None,
        }
    }
}

/// RFC 7515 §4.1.11: a recipient MUST reject a JWS whose `crit` lists an extension it does
/// not understand, and this proxy implements none (some, like RFC 7797's `b64`, would even
/// change what the signature covers). So any `crit` is refused, before the signature check.
pub(super) fn check_crit(crit: &Member) -> Result<(), AuthError> {
    match crit {
        Member::Absent => Ok(()),
        Member::Present(_) => Err(AuthError::Malformed(
            "the header has a crit member; no JWS extension is supported",
        )),
    }
}

/// The JOSE header says what kind of token this is. `typ` (RFC 7515 §4.1.9, RFC 7519 §5.1):
/// absent or `JWT` in any case; OAuth access tokens say `at+jwt` (RFC 9068 §2.1). `cat`:
/// absent (tokens from before Clerk added it), the session category or the "ignore" one;
/// template (`cl_B7d4PD222AAA`), M2M (`cl_B7d4PD333AAA`) and unknown categories are refused.
pub(super) fn check_header_type(typ: &Member, cat: &Member) -> Result<(), AuthError> {
    if *typ != Member::Absent && !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")) {
        return Err(AuthError::WrongTokenType("the header's typ is not JWT"));
    }
    if *cat != Member::Absent && !matches!(cat.as_str(), Some(CATEGORY_SESSION | CATEGORY_IGNORE)) {
        return Err(AuthError::WrongTokenType(
            "the header's cat is not the session category",
        ));
    }
    Ok(())
}

/// Every Clerk session token names its session (`sid`) and a user; JWT-template tokens have
/// no `sid`, and M2M tokens' `sub` is a machine (`mch_...`).
pub(super) fn check_claims_type(sid: &Member, sub: Option<&str>) -> Result<(), AuthError> {
    if sid.as_str().is_none_or(str::is_empty) {
        return Err(AuthError::WrongTokenType(
            "the token names no session (sid)",
        ));
    }
    if sub.is_some_and(|s| s.starts_with(MACHINE_ID_PREFIX)) {
        return Err(AuthError::WrongTokenType(
            "the subject is a machine, not a user",
        ));
    }
    Ok(())
}

/// `sts` (session status, Clerk's version-2 claims): `active`, or `pending` for a session with
/// unfinished tasks (choosing an organization, say), which Clerk's SDKs treat as signed out
/// unless told otherwise. Absent in version-1 tokens. Any other value is one this proxy does
/// not know, and a session it cannot call live.
pub(super) fn check_status(sts: &Member, accept_pending: bool) -> Result<(), AuthError> {
    match sts {
        Member::Absent => Ok(()),
        _ => match sts.as_str() {
            Some("active") => Ok(()),
            Some("pending") if accept_pending => Ok(()),
            Some("pending") => Err(AuthError::SessionPending),
            _ => Err(AuthError::Malformed(
                "the session status (sts) is neither active nor pending",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(v: Value) -> Member {
        Member::Present(v)
    }

    #[test]
    fn members_tell_null_from_absent() {
        #[derive(Deserialize)]
        struct H {
            #[serde(default)]
            crit: Member,
        }
        let absent: H = serde_json::from_str("{}").unwrap();
        let null: H = serde_json::from_str(r#"{"crit":null}"#).unwrap();
        assert_eq!(absent.crit, Member::Absent);
        assert_eq!(null.crit, member(Value::Null));
        assert!(check_crit(&absent.crit).is_ok());
        assert!(check_crit(&null.crit).is_err());
        assert!(check_crit(&member(json!(["b64"]))).is_err());
    }

    #[test]
    fn typ_and_cat_allow_sessions_only() {
        let absent = Member::Absent;
        for typ in [Member::Absent, member(json!("JWT")), member(json!("jwt"))] {
            assert!(check_header_type(&typ, &absent).is_ok(), "{typ:?}");
        }
        for typ in [
            json!("at+jwt"),
            json!("application/at+jwt"),
            json!(""),
            json!(1),
        ] {
            assert_eq!(
                check_header_type(&member(typ.clone()), &absent).map_err(|e| e.code()),
                Err("wrong_token_type"),
                "{typ}"
            );
        }
        for cat in [CATEGORY_SESSION, CATEGORY_IGNORE] {
            assert!(check_header_type(&absent, &member(json!(cat))).is_ok());
        }
        for cat in [
            json!("cl_B7d4PD222AAA"),
            json!("cl_B7d4PD333AAA"),
            json!("cl_b7d4pd111aaa"),
            json!("cl_new"),
            Value::Null,
            json!([CATEGORY_SESSION]),
        ] {
            assert!(
                check_header_type(&absent, &member(cat.clone())).is_err(),
                "{cat}"
            );
        }
    }

    #[test]
    fn a_session_has_a_sid_and_a_user() {
        let sid = member(json!("sess_1"));
        assert!(check_claims_type(&sid, Some("user_1")).is_ok());
        assert!(
            check_claims_type(&sid, None).is_ok(),
            "sub is checked later"
        );
        for bad in [
            Member::Absent,
            member(json!("")),
            member(json!(7)),
            member(Value::Null),
        ] {
            assert!(check_claims_type(&bad, Some("user_1")).is_err(), "{bad:?}");
        }
        assert!(check_claims_type(&sid, Some("mch_2abc")).is_err());
    }

    #[test]
    fn pending_sessions_only_when_allowed() {
        let pending = member(json!("pending"));
        assert!(check_status(&Member::Absent, false).is_ok());
        assert!(check_status(&member(json!("active")), false).is_ok());
        assert_eq!(
            check_status(&pending, false),
            Err(AuthError::SessionPending)
        );
        assert!(check_status(&pending, true).is_ok());
        for other in [json!("ended"), json!("Active"), Value::Null, json!(1)] {
            assert_eq!(
                check_status(&member(other.clone()), true).map_err(|e| e.code()),
                Err("malformed_token"),
                "{other}"
            );
        }
    }
}
