//! The route table (`[[routes]]`): which forwarded paths need a verified Clerk session. The
//! first entry that matches wins; no match means the path is forwarded without auth. Paths are
//! matched in every reading a Node router could give them (`path.rs`), so `/API/Admin`,
//! `/api/./admin` and `/api/%61dmin` are all under `/api/admin`.

use http::Method;

use crate::config::{AuthMode, LimitPer, RouteConfig};
use crate::limits::{Limits, PolicyId};
use crate::routes::path::{RoutePath, canonical_prefix};

/// One configured route.
pub(crate) struct TableRoute {
    /// Its name, in metrics and the access log. Leaked once at start (the table lives as long
    /// as the process), so it can be a `&'static str` label like the built-in routes'.
    pub(crate) name: &'static str,
    prefix: Option<String>,
    paths: Vec<String>,
    methods: Vec<Method>,
    pub(crate) auth: AuthMode,
    pub(crate) forward_authorization: bool,
    /// The methods a CORS preflight is granted.
    pub(crate) allow: http::HeaderValue,
    /// The route's own rate limit (`rate_limit`): what it counts by, and its policy once the
    /// limits are built ([`RouteTable::with_limits`]).
    pub(crate) limit: Option<(LimitPer, PolicyId)>,
    limit_per: Option<LimitPer>,
}

/// Methods a preflight for a route without `methods` is granted.
const ANY_METHOD: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

pub(crate) struct RouteTable {
    routes: Vec<TableRoute>,
    /// `[[limits.forward]]`: per-IP limits on forwarded paths by prefix (canonical), first
    /// match wins. Matched like the routes' prefixes, so no spelling of a path dodges them.
    forward_limits: Vec<(String, PolicyId)>,
}

impl RouteTable {
    pub(crate) fn new(config: &[RouteConfig]) -> Self {
        Self {
            routes: config.iter().map(TableRoute::new).collect(),
            forward_limits: Vec::new(),
        }
    }

    /// The first route `path` and `method` match, with its position in the table.
    pub(crate) fn find(&self, path: &RoutePath, method: &Method) -> Option<(usize, &TableRoute)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, route)| route.matches(path, method))
    }

    /// Finds each route's limit among the policies `limits` holds (`route:<name>`, registered
    /// from [`RouteConfig::rate_policy`]; a limit with `requests = 0` has none: not limited),
    /// and takes the `[[limits.forward]]` prefixes.
    pub(crate) fn with_limits(mut self, limits: &Limits) -> Self {
        self.forward_limits = (limits.forward_policies().iter())
            .map(|(prefix, policy)| (canonical_prefix(prefix), *policy))
            .collect();
        for route in &mut self.routes {
            route.limit = route.limit_per.and_then(|per| {
                let policy = limits.policy(&format!("route:{}", route.name))?;
                Some((per, policy))
            });
        }
        self
    }

    /// The `[[limits.forward]]` policy `path` is under, if any.
    pub(crate) fn forward_limit(&self, path: &RoutePath) -> Option<PolicyId> {
        (self.forward_limits.iter())
            .find(|(prefix, _)| path.under(prefix))
            .map(|(_, policy)| *policy)
    }

    pub(crate) fn has_forward_limits(&self) -> bool {
        !self.forward_limits.is_empty()
    }

    pub(crate) fn get(&self, index: usize) -> Option<&TableRoute> {
        self.routes.get(index)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.routes.iter().map(|r| r.name)
    }
}

impl TableRoute {
    fn new(config: &RouteConfig) -> Self {
        let methods: Vec<Method> = config
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let allow = match methods.is_empty() {
            true => ANY_METHOD.to_owned(),
            false => {
                let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                format!("{}, OPTIONS", names.join(", "))
            }
        };
        Self {
            name: Box::leak(config.name.clone().into_boxed_str()),
            prefix: config.prefix.as_deref().map(canonical_prefix),
            paths: config.paths.iter().map(|p| canonical_prefix(p)).collect(),
            methods,
            auth: config.auth,
            forward_authorization: config.forward_authorization,
            allow: http::HeaderValue::from_str(&allow)
                .unwrap_or(http::HeaderValue::from_static(ANY_METHOD)),
            limit: None,
            limit_per: config.rate_limit.as_ref().map(|l| l.per),
        }
    }

    fn matches(&self, path: &RoutePath, method: &Method) -> bool {
        // A preflight asks about another method: it belongs to the route of that path.
        let method_ok =
            self.methods.is_empty() || *method == Method::OPTIONS || self.methods.contains(method);
        method_ok
            && (self.prefix.as_deref().is_some_and(|p| path.under(p))
                || self.paths.iter().any(|p| path.is(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml: &str) -> RouteTable {
        #[derive(serde::Deserialize)]
        struct Routes {
            routes: Vec<RouteConfig>,
        }
        let routes: Routes = toml::from_str(toml).unwrap();
        RouteTable::new(&routes.routes)
    }

    fn found(table: &RouteTable, method: Method, path: &str) -> Option<&'static str> {
        let path = RoutePath::parse(path).unwrap();
        table.find(&path, &method).map(|(_, r)| r.name)
    }

    #[test]
    fn the_first_matching_route_wins_and_methods_narrow_it() {
        let t = table(
            r#"
            [[routes]]
            name = "admin"
            prefix = "/api/admin/"
            auth = "required"
            [[routes]]
            name = "writes"
            prefix = "/api"
            methods = ["POST", "DELETE"]
            auth = "required"
            [[routes]]
            name = "me"
            paths = ["/me"]
            auth = "optional"
            "#,
        );
        assert_eq!(found(&t, Method::GET, "/API/Admin/users"), Some("admin"));
        assert_eq!(found(&t, Method::POST, "/api/messages"), Some("writes"));
        assert_eq!(found(&t, Method::GET, "/api/messages"), None);
        assert_eq!(found(&t, Method::OPTIONS, "/api/messages"), Some("writes"));
        assert_eq!(found(&t, Method::GET, "/me/"), Some("me"));
        assert_eq!(found(&t, Method::GET, "/me/x"), None, "an exact path");
        assert_eq!(found(&t, Method::GET, "/other"), None);
    }

    #[test]
    fn preflights_are_granted_the_routes_methods() {
        let t = table(
            r#"
            [[routes]]
            name = "a"
            prefix = "/a"
            methods = ["GET", "POST"]
            [[routes]]
            name = "b"
            prefix = "/b"
            "#,
        );
        assert_eq!(t.routes[0].allow, "GET, POST, OPTIONS");
        assert_eq!(t.routes[1].allow, ANY_METHOD);
    }
}
