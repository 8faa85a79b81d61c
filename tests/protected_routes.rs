//! Protected routes (issue 17): `[[routes]]` entries that need a verified Clerk session, the
//! identity headers Node receives, and the client copies of them that never reach Node. Against
//! the real Node upstream, which logs what it receives (`/_t/seen`, and its echo of every
//! request).

mod common;

use common::clerk::*;
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use stream_token_proxy::config::RouteConfig;

/// The routes of these tests: `/api/admin` needs a session, `/api/me` may have one.
const ROUTES: &str = r#"
    [[routes]]
    name = "admin"
    prefix = "/api/admin"
    auth = "required"
    [[routes]]
    name = "me"
    prefix = "/api/me"
    auth = "optional"
    [[routes]]
    name = "internal"
    prefix = "/internal"
    auth = "required"
    forward_authorization = false
"#;

fn routes(toml: &str) -> Vec<RouteConfig> {
    #[derive(serde::Deserialize)]
    struct Table {
        routes: Vec<RouteConfig>,
    }
    toml::from_str::<Table>(toml).expect("routes parse").routes
}

struct Protected {
    upstream: NodeUpstream,
    key: ClerkKey,
    proxy: TestProxy,
    client: TlsClient,
}

impl Protected {
    async fn start(tweak: impl FnOnce(&mut stream_token_proxy::Config)) -> Self {
        let upstream = NodeUpstream::start();
        let key = ClerkKey::generate("ins_protected");
        let pem = key.public_pem.clone();
        let proxy = TestProxy::start(&upstream.url(), |c| {
            use_pem(c, &pem);
            c.routes = routes(ROUTES);
            tweak(c);
        })
        .await;
        let client = proxy.client();
        let f = Self {
            upstream,
            key,
            proxy,
            client,
        };
        f.seen().await;
        f
    }

    async fn seen(&self) -> Vec<Seen> {
        node_seen(self.upstream.port).await
    }

    fn token(&self, sub: &str) -> String {
        self.key.sign(&claims(sub))
    }
}

fn request(path: &str, token: Option<&str>) -> Request<TestBody> {
    let mut builder = Request::get(path).header("host", "localhost");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(empty()).unwrap()
}

fn identity(echo: &Value) -> Vec<(String, String)> {
    raw_headers(echo)
        .into_iter()
        .filter(|(name, _)| name.to_ascii_lowercase().starts_with("x-clerk-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect()
}

#[tokio::test]
async fn a_valid_session_reaches_node_with_its_identity_and_the_request_unchanged() {
    let f = Protected::start(|_| {}).await;
    let org = json!({"id": "org_42", "rol": "org:admin", "slg": "acme"});
    let token = f.key.sign(&claims_with("user_admin", &[("o", org)]));
    let sent = Request::get("/api/admin/users?page=2&q=%20x")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .header("x-app", "one")
        .header("x-app", "two")
        .body(empty())
        .unwrap();
    let response = f.client.h1(sent).await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = body_json(response).await;
    assert_eq!(
        echo["url"], "/api/admin/users?page=2&q=%20x",
        "byte for byte"
    );
    assert_eq!(echoed(&echo, "x-app"), ["one", "two"]);
    assert_eq!(echoed(&echo, "authorization"), [format!("Bearer {token}")]);
    assert_eq!(
        identity(&echo),
        [
            ("x-clerk-user-id".into(), "user_admin".into()),
            ("x-clerk-session-id".into(), "sess_user_admin".into()),
            ("x-clerk-org-id".into(), "org_42".into()),
            ("x-clerk-org-role".into(), "org:admin".into()),
        ]
    );
    // v1 organization claims work too.
    let v1 = f.key.sign(&claims_with(
        "user_v1",
        &[
            ("org_id", json!("org_1")),
            ("org_role", json!("basic_member")),
        ],
    ));
    let echo = body_json(f.client.h1(request("/api/admin", Some(&v1))).await).await;
    assert_eq!(echoed(&echo, "x-clerk-org-id"), ["org_1"]);
    assert_eq!(echoed(&echo, "x-clerk-org-role"), ["basic_member"]);
    // Counted under the route's name.
    let admin_ok = common::admin::metric(
        &f.proxy,
        "stream_token_proxy_requests_total{route=\"admin\",status=\"2xx\"}",
    );
    assert_eq!(admin_ok, 2.0);
    f.proxy.stop().await;
}

#[tokio::test]
async fn without_a_valid_session_a_required_route_is_401_and_node_sees_nothing() {
    let f = Protected::start(|_| {}).await;
    let expired = f
        .key
        .sign(&claims_with("u", &[("exp", json!(now() - 600))]));
    let template = f.key.sign(&claims_with("u", &[("sid", Value::Null)]));
    let stranger = ClerkKey::generate("ins_stranger").sign(&claims("u"));
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("no token", None, "missing_credentials"),
        ("garbage", Some("not-a-jwt"), "malformed_token"),
        ("expired", Some(&expired), "token_expired"),
        ("template token", Some(&template), "wrong_token_type"),
        ("another key", Some(&stranger), "bad_signature"),
    ];
    for (name, token, code) in cases {
        let response = f.client.h1(request("/api/admin/x", token)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{name}"
        );
        assert_eq!(body_json(response).await["error"], code, "{name}");
    }
    assert_eq!(f.seen().await, [], "nothing reached Node");
    f.proxy.stop().await;
}

#[tokio::test]
async fn an_optional_route_forwards_without_credentials_and_refuses_bad_ones() {
    let f = Protected::start(|_| {}).await;
    let anonymous = body_json(f.client.h1(request("/api/me", None)).await).await;
    assert_eq!(identity(&anonymous), []);
    let bad = f.client.h1(request("/api/me", Some("a.b.c"))).await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let token = f.token("user_me");
    let signed_in = body_json(f.client.h1(request("/api/me", Some(&token))).await).await;
    assert_eq!(echoed(&signed_in, "x-clerk-user-id"), ["user_me"]);
    let seen: Vec<String> = f.seen().await.into_iter().map(|s| s.url).collect();
    assert_eq!(
        seen,
        ["/api/me", "/api/me"],
        "the bad token never reached Node"
    );
    f.proxy.stop().await;
}

#[tokio::test]
async fn every_spelling_of_a_protected_path_is_the_protected_route() {
    let f = Protected::start(|_| {}).await;
    for path in [
        "/API/Admin",
        "/api/./admin",
        "/api/x/../admin",
        "/api/%61dmin",
        "/api/admin;x",
        "/api/admin/",
        "/api\\admin",
    ] {
        let response = f.client.h1(request(path, None)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // A leading `//` is refused whatever follows (Node would read a host there).
    let response = f.client.h1(request("//api/admin", None)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(f.seen().await, [], "no spelling reached Node");
    // And a valid session still reaches Node with the path as sent.
    let token = f.token("user_spell");
    let echo = body_json(f.client.h1(request("/API/Admin;x", Some(&token))).await).await;
    assert_eq!(echo["url"], "/API/Admin;x");
    f.proxy.stop().await;
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_node_on_any_route() {
    let f = Protected::start(|_| {}).await;
    let token = f.token("user_real");
    let spoofed = |path: &str, h2: bool| {
        let uri = if h2 {
            format!("https://localhost{path}")
        } else {
            path.to_string()
        };
        let mut b = Request::get(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("X-Clerk-User-Id", "user_victim")
            .header("x-clerk-user-id", "user_victim2")
            .header("X-CLERK-ORG-ROLE", "org:admin")
            .header("x-clerk-session-id", "sess_forged");
        if !h2 {
            b = b
                .header("host", "localhost")
                .header("connection", "x-clerk-org-id")
                .header("x-clerk-org-id", "org_forged");
        }
        b.body(empty()).unwrap()
    };
    for path in ["/api/admin", "/api/me", "/public/page"] {
        for h2 in [false, true] {
            let response = match h2 {
                false => f.client.h1(spoofed(path, false)).await,
                true => f.client.h2(spoofed(path, true)).await,
            };
            let echo = body_json(response).await;
            let got = identity(&echo);
            let forged = got
                .iter()
                .any(|(_, v)| v.contains("victim") || v.contains("forged") || v == "org:admin");
            assert!(!forged, "{path} h2={h2}: {got:?}");
            if path != "/public/page" {
                assert_eq!(echoed(&echo, "x-clerk-user-id"), ["user_real"], "{path}");
            } else {
                assert_eq!(got, [], "an unprotected route adds no identity");
            }
        }
    }
    f.proxy.stop().await;
}

#[tokio::test]
async fn forward_authorization_false_keeps_the_token_from_node() {
    let f = Protected::start(|_| {}).await;
    let token = f.token("user_internal");
    let echo = body_json(f.client.h1(request("/internal/job", Some(&token))).await).await;
    assert_eq!(echoed(&echo, "authorization"), Vec::<String>::new());
    assert_eq!(echoed(&echo, "x-clerk-user-id"), ["user_internal"]);
    f.proxy.stop().await;
}

/// A WebSocket upgrade to a protected prefix: authenticated on the upgrade request, before
/// the tunnel opens.
#[tokio::test]
async fn a_websocket_upgrade_to_a_protected_prefix_needs_a_session() {
    let f = Protected::start(|c| {
        c.routes = routes(
            r#"
            [[routes]]
            name = "sockets"
            prefix = "/_t/ws"
            auth = "required"
            "#,
        );
    })
    .await;
    let refused = {
        let stream = f.client.connect(&[b"http/1.1"]).await;
        tokio_tungstenite::client_async("wss://localhost/_t/ws", stream).await
    };
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("an upgrade without a session was not refused: {other:?}"),
    }
    let token = f.token("user_ws");
    let stream = f.client.connect(&[b"http/1.1"]).await;
    let request = http::Request::get("wss://localhost/_t/ws")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the upgrade with a session opens");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(STEP, ws.next()).await.unwrap();
    assert_eq!(
        echoed.unwrap().unwrap(),
        tokio_tungstenite::tungstenite::Message::text("hi")
    );
    f.proxy.stop().await;
}

/// Routes with limits of their own: per user after the session, per IP before it.
const LIMITED_ROUTES: &str = r#"
    [[routes]]
    name = "messages"
    prefix = "/api/messages"
    auth = "required"
    rate_limit = { per = "user", requests = 3, period = "1m" }
    [[routes]]
    name = "search"
    prefix = "/api/search"
    auth = "required"
    rate_limit = { per = "ip", requests = 2, period = "1m" }
"#;

async fn statuses(f: &Protected, path: &str, token: Option<&str>, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(f.client.h1(request(path, token)).await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn a_route_limit_counts_per_user_or_per_ip_before_the_session_is_checked() {
    let f = Protected::start(|c| c.routes = routes(LIMITED_ROUTES)).await;
    let (alice, bob) = (f.token("user_alice"), f.token("user_bob"));

    // Per user: alice's fourth request is refused; bob has his own three.
    let alice_got = statuses(&f, "/api/messages/1", Some(&alice), 4).await;
    assert_eq!(alice_got, [200, 200, 200, 429]);
    let refused = f.client.h1(request("/api/messages/1", Some(&alice))).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let header = |name: &str| refused.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("ratelimit-policy"), r#""route:messages";q=3;w=60"#);
    assert!(header("ratelimit").starts_with(r#""route:messages";r=0;t="#));
    assert!(header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(body_json(refused).await["error"], "rate_limited");
    assert_eq!(
        statuses(&f, "/api/messages/1", Some(&bob), 3).await,
        [200; 3]
    );
    assert_eq!(
        f.seen().await.len(),
        6,
        "only the admitted requests reached Node"
    );

    // Per IP, before any session work: once over, even a bad token gets 429, not 401.
    let ip_got = statuses(&f, "/api/search?q=a", Some(&alice), 3).await;
    assert_eq!(ip_got, [200, 200, 429]);
    let garbage = f.client.h1(request("/api/search", Some("not-a-jwt"))).await;
    assert_eq!(garbage.status(), StatusCode::TOO_MANY_REQUESTS);

    let refused_total = |limiter: &str| {
        let line = format!("stream_token_proxy_rate_limited_total{{limiter=\"{limiter}\"}} ");
        common::admin::metric(&f.proxy, &line)
    };
    assert_eq!(refused_total("route:messages"), 2.0);
    assert_eq!(refused_total("route:search"), 2.0);
    f.proxy.stop().await;
}
