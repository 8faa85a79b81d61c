//! `[[routes]]` and `[identity]`: which forwarded paths need a verified Clerk session, and
//! the headers that hand Node the verified identity. With no routes (the default), every path
//! but the token route is forwarded unchanged, without auth.

use serde::Deserialize;

use super::{ConfigError, FieldName, KeyedBy, PolicySpec, PositiveDuration, RateConfig};

/// One entry of the route table. The first entry that matches a request wins; a request no
/// entry matches is forwarded without auth. The token route is answered by the proxy whatever
/// the table says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name, in metrics and the access log (a bounded set).
    pub name: String,
    /// Paths at or under this prefix (segment-wise: `/api` covers `/api` and `/api/x`, not
    /// `/apix`), read the way Node routers read them (the token route's rule).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Exact paths, read the same way.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Only these methods match (any, when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub auth: AuthMode,
    /// Pass the client's `Authorization` header on to Node (it may want the token).
    #[serde(default = "yes")]
    pub forward_authorization: bool,
    /// A rate limit of the route's own. Off unless set.
    #[serde(default)]
    pub rate_limit: Option<RouteLimit>,
}

/// `requests` per `period` (burst `burst`) on one route, counted per client IP (before any
/// session work) or per verified user (after; a request without a session, on an `optional`
/// route, counts against its IP).
///
/// The fields are spelt out rather than a flattened [`RateConfig`], so that a misspelt key is
/// named in the error (serde cannot deny unknown fields through `flatten`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    pub per: LimitPer,
    pub requests: u32,
    #[serde(default = "super::limits::one_minute")]
    pub period: PositiveDuration,
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RouteLimit {
    pub fn rate(&self) -> RateConfig {
        RateConfig::with_optional_burst(self.requests, self.period, self.burst)
    }
}

/// What a route's limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitPer {
    Ip,
    User,
}

fn yes() -> bool {
    true
}

/// What a route asks of the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid Clerk session, or 401 and nothing reaches Node.
    Required,
    /// No credentials: forwarded without identity; credentials that fail: 401.
    Optional,
    /// Forwarded as any other path (identity headers still removed).
    #[default]
    None,
}

/// The headers that carry the verified identity to Node. A client's own copies of these are
/// removed from every forwarded request, so Node can trust them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The verified `sub`.
    pub user_id_header: FieldName,
    /// The session id (`sid`).
    pub session_id_header: FieldName,
    /// The active organization (`o.id`, or v1 `org_id`), when the session has one.
    pub org_id_header: FieldName,
    /// The role in it (`o.rol`, or v1 `org_role`).
    pub org_role_header: FieldName,
    /// Also send the verified claims (the token's payload, base64url JSON) in this header.
    /// Off unless set.
    pub claims_header: Option<FieldName>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        let name = |n: &'static str| FieldName(http::HeaderName::from_static(n));
        Self {
            user_id_header: name("x-clerk-user-id"),
            session_id_header: name("x-clerk-session-id"),
            org_id_header: name("x-clerk-org-id"),
            org_role_header: name("x-clerk-org-role"),
            claims_header: None,
        }
    }
}

impl IdentityConfig {
    /// Every header name the proxy sets for Node (and so removes from clients).
    pub fn header_names(&self) -> impl Iterator<Item = &FieldName> {
        [
            &self.user_id_header,
            &self.session_id_header,
            &self.org_id_header,
            &self.org_role_header,
        ]
        .into_iter()
        .chain(&self.claims_header)
    }
}

impl RouteConfig {
    /// The route's limit as an entry of the limiter registry, `route:<name>` (its name in
    /// metrics and the `RateLimit` headers).
    pub fn rate_policy(&self) -> Option<PolicySpec> {
        let limit = self.rate_limit.as_ref()?;
        let keyed_by = match limit.per {
            LimitPer::Ip => KeyedBy::Ip,
            LimitPer::User => KeyedBy::User,
        };
        let id = format!("route:{}", self.name);
        let setting = format!("routes `{}` rate_limit", self.name);
        Some(PolicySpec::new(
            id.clone(),
            id,
            setting,
            limit.rate(),
            keyed_by,
        ))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let route = &self.name;
        let invalid = |why: String| ConfigError::invalid(format!("routes `{route}`: {why}"));
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"_-.".contains(&b);
        if route.is_empty() || !route.bytes().all(plain) {
            return Err(invalid(
                "the name must be letters, digits, `_`, `-` or `.`".into(),
            ));
        }
        if self.prefix.is_none() && self.paths.is_empty() {
            return Err(invalid("give a `prefix` or `paths`".into()));
        }
        for path in self.prefix.iter().chain(&self.paths) {
            if !path.starts_with('/') || path.starts_with("//") {
                return Err(invalid(format!("`{path}` must start with a single /")));
            }
        }
        for method in &self.methods {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(invalid(format!("`{method}` is not an HTTP method")));
            }
        }
        let per_user = self.rate_limit.as_ref().map(|l| l.per) == Some(LimitPer::User);
        if per_user && self.auth == AuthMode::None {
            return Err(invalid(
                "a rate_limit per user needs auth = \"required\" or \"optional\"".into(),
            ));
        }
        self.rate_policy().map_or(Ok(()), |p| p.validate())
    }
}

/// The table's rules: each entry's, and names unique (they label metrics).
pub fn validate_routes(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    for (i, route) in routes.iter().enumerate() {
        route.validate()?;
        if routes[..i].iter().any(|r| r.name == route.name) {
            return Err(ConfigError::invalid(format!(
                "routes: the name `{}` is used twice",
                route.name
            )));
        }
        if matches!(route.name.as_str(), "token" | "forward") {
            return Err(ConfigError::invalid(format!(
                "routes: `{}` is the name of a built-in route",
                route.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Vec<RouteConfig>, String> {
        #[derive(Deserialize)]
        struct Table {
            routes: Vec<RouteConfig>,
        }
        toml::from_str::<Table>(toml)
            .map(|t| t.routes)
            .map_err(|e| e.to_string())
    }

    fn with_limit(auth: &str, rate_limit: &str) -> Result<(), String> {
        let routes = parse(&format!(
            "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nauth = \"{auth}\"\nrate_limit = {rate_limit}\n"
        ))?;
        validate_routes(&routes).map_err(|e| e.to_string())
    }

    #[test]
    fn a_route_limit_is_validated_with_its_route() {
        assert_eq!(
            with_limit("none", r#"{ per = "ip", requests = 5 }"#),
            Ok(())
        );
        assert_eq!(
            with_limit(
                "optional",
                r#"{ per = "user", requests = 5, period = "10s", burst = 2 }"#
            ),
            Ok(())
        );
        let per_user_without_auth = with_limit("none", r#"{ per = "user", requests = 5 }"#);
        assert!(
            per_user_without_auth
                .unwrap_err()
                .contains("per user needs auth")
        );
        let no_burst = with_limit("none", r#"{ per = "ip", requests = 5, burst = 0 }"#);
        assert!(no_burst.unwrap_err().contains("burst must be at least 1"));
        let misspelt = with_limit("none", r#"{ per = "ip", requests = 5, brust = 2 }"#);
        assert!(misspelt.unwrap_err().contains("unknown field `brust`"));
        let unknown_per = with_limit("none", r#"{ per = "org", requests = 5 }"#);
        assert!(unknown_per.unwrap_err().contains("org"));
    }

    #[test]
    fn a_route_limit_is_a_policy_named_after_its_route() {
        let routes = parse(
            "[[routes]]\nname = \"chat\"\nprefix = \"/c\"\nauth = \"required\"\nrate_limit = { per = \"user\", requests = 3 }\n",
        )
        .unwrap();
        let policy = routes[0].rate_policy().unwrap();
        assert_eq!((&*policy.name, &*policy.id), ("route:chat", "route:chat"));
        assert_eq!(policy.keyed_by, KeyedBy::User);
        assert_eq!((policy.rate.requests, policy.rate.burst()), (3, 3));
    }
}
