//! The routes of the route table that need a session (`auth = "required"` or `"optional"`):
//! the session is verified exactly as the token route verifies it, and Node receives the
//! verified identity in headers (`[identity]`) that no client can set: every forwarded request
//! has the client's own copies removed (`forwarding.remove_request_headers`, which the
//! identity header names are added to).

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::table::TableRoute;
use super::{App, RequestContext};
use crate::auth::{self, AuthError, Session};
use crate::config::{AuthMode, FieldName, IdentityConfig, LimitPer};
use crate::error::ProxyError;
use crate::limits::LimitKey;
use crate::routes::body::ProxyBody;
use crate::routes::token::verify_traced;

/// The identity headers a verified session adds to its forwarded request.
pub(crate) type IdentityHeaders = Vec<(HeaderName, HeaderValue)>;

impl App {
    /// A route of the table: CORS preflights answered here, the session checked as the route
    /// asks, then forwarded with the identity headers.
    pub(super) async fn table_route(
        &self,
        mut request: Request<Incoming>,
        route: &TableRoute,
        ctx: &mut RequestContext,
    ) -> Response<ProxyBody> {
        let cors = &self.shared.token.cors;
        let browser_facing = route.auth != AuthMode::None;
        if browser_facing && is_preflight(&request) {
            let answer = cors.preflight_allowing(request.headers(), &route.allow);
            return self.respond(answer, ctx);
        }
        let origin = cors.allowed_origin(request.headers());
        let mut response = match self.admit(&request, route, ctx).await {
            Ok(session) => {
                let identity = session.map_or_else(Vec::new, |s| self.identity_headers(&s));
                if !route.forward_authorization {
                    request.headers_mut().remove(header::AUTHORIZATION);
                }
                self.forward_route(request, ctx, &identity).await
            }
            Err(refused) => self.respond(Err(refused), ctx),
        };
        if browser_facing {
            cors.decorate(&mut response, origin);
        }
        response
    }

    /// The route's checks in order: its per-IP limit (before any session work), the session,
    /// its per-user limit (a request without a session counts against its IP).
    async fn admit(
        &self,
        request: &Request<Incoming>,
        route: &TableRoute,
        ctx: &mut RequestContext,
    ) -> Result<Option<Session>, ProxyError> {
        let Some((per, policy)) = route.limit else {
            return self.authenticate(request, route.auth, ctx).await;
        };
        let limits = &self.shared.limits;
        let ip = LimitKey::ip(self.client_ip(request, ctx));
        if per == LimitPer::Ip {
            limits
                .check(policy, &ip)
                .await
                .map_err(ProxyError::RateLimited)?;
        }
        let session = self.authenticate(request, route.auth, ctx).await?;
        if per == LimitPer::User {
            let key = match &session {
                Some(s) => LimitKey::User(s.user_id.clone()),
                None => ip,
            };
            limits
                .check(policy, &key)
                .await
                .map_err(ProxyError::RateLimited)?;
        }
        Ok(session)
    }

    /// The verified session, if the route wants one and the request has one. `required`: no
    /// credentials is a 401; `optional`: no credentials is no session, but credentials that
    /// fail are a 401 (a bad token is never silently ignored).
    async fn authenticate(
        &self,
        request: &Request<Incoming>,
        mode: AuthMode,
        ctx: &mut RequestContext,
    ) -> Result<Option<Session>, ProxyError> {
        if mode == AuthMode::None {
            return Ok(None);
        }
        let token = match auth::credentials(request.headers(), self.shared.session_cookie) {
            Err(AuthError::MissingCredentials) if mode == AuthMode::Optional => return Ok(None),
            found => found?,
        };
        let session = verify_traced(&self.shared.token.verifier, token, &ctx.trace).await?;
        if let Some(e) = ctx.entry.as_mut() {
            e.user_id = Some(session.user_id.clone());
        }
        Ok(Some(session))
    }

    fn identity_headers(&self, session: &Session) -> IdentityHeaders {
        identity_headers(&self.shared.identity, session)
    }
}

/// `X-Clerk-User-Id`, `X-Clerk-Session-Id`, and the organization and claims when there are
/// any. A value that is no valid header value (only an org claim could be) is left out.
fn identity_headers(names: &IdentityConfig, session: &Session) -> IdentityHeaders {
    let mut headers = Vec::with_capacity(5);
    let mut add = |name: &FieldName, value: Option<&str>| {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.push((name.0.clone(), value));
        }
    };
    let org = session.org.as_ref();
    add(&names.user_id_header, Some(&session.user_id));
    add(&names.session_id_header, Some(&session.session_id));
    add(&names.org_id_header, org.map(|o| &*o.id));
    add(&names.org_role_header, org.and_then(|o| o.role.as_deref()));
    if let Some(name) = &names.claims_header {
        add(name, session.claims.as_deref());
    }
    headers
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(request: &Request<Incoming>) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::Org;

    #[test]
    fn identity_headers_carry_the_session_and_skip_what_it_lacks() {
        let mut session = Session {
            user_id: Arc::from("user_1"),
            session_id: Arc::from("sess_1"),
            ..Session::default()
        };
        let names = IdentityConfig::default();
        let plain: Vec<_> = identity_headers(&names, &session)
            .into_iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            plain,
            ["x-clerk-user-id: user_1", "x-clerk-session-id: sess_1"]
        );

        session.org = Some(Org {
            id: Arc::from("org_9"),
            role: Some(Arc::from("org:admin")),
        });
        session.claims = Some(Arc::from("eyJzdWIiOiJ1c2VyXzEifQ"));
        let with_claims = IdentityConfig {
            claims_header: Some(crate::config::FieldName(HeaderName::from_static(
                "x-claims",
            ))),
            ..IdentityConfig::default()
        };
        let all: Vec<_> = identity_headers(&with_claims, &session)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(
            all,
            [
                "x-clerk-user-id",
                "x-clerk-session-id",
                "x-clerk-org-id",
                "x-clerk-org-role",
                "x-claims"
            ]
        );
        session.org = Some(Org {
            id: Arc::from("bad\nvalue"),
            role: None,
        });
        assert_eq!(
            identity_headers(&names, &session).len(),
            2,
            "an unusable value is left out"
        );
    }
}
