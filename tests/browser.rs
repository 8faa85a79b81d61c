//! A real browser (issue 17): headless Chromium loads a page from an allowed origin that calls
//! the token route with `fetch` and an `Authorization` header (so a CORS preflight first), and
//! a protected route with the `__session` cookie; and the same page from a disallowed origin,
//! where the browser itself must block the response. The page (`tests/upstream/browser.html`,
//! served by the Node upstream) writes its outcome into the DOM, which Chromium dumps.
//!
//! Two origins on one proxy: `https://127.0.0.1:PORT` (allowed) and `https://localhost:PORT`
//! (where the token route is called from the other origin, and where the cookie page runs).
//! Chromium is Debian's `chromium`, which `.ci/run` installs; under `CI` a missing browser
//! fails the test, elsewhere it is skipped with a loud message.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::clerk::*;
use common::*;
use serde_json::Value;

const CHROMIUM: &str = "chromium";

/// `chromium --headless --dump-dom` on `url`: the DOM once the page's script has finished (its
/// virtual time budget lets the fetches complete), bounded by a wall-clock limit.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The proxy's dev certificate is self-signed.
            "--ignore-certificate-errors",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs");
    let pid = child.id();
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut guard = guard;
    loop {
        if guard.0.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chromium (pid {pid}) did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    use std::io::Read;
    guard
        .0
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("dom");
    out
}

/// The JSON the page wrote into `<pre id="result">`.
fn outcome(dom: &str) -> Value {
    let start = dom.find("<pre id=\"result\">").expect("the result element") + 17;
    let end = start + dom[start..].find("</pre>").expect("its end");
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("the page did not finish: {text:?}"))
}

fn chromium_available() -> bool {
    let found = Command::new(CHROMIUM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing; .ci/run installs Debian's chromium package"
        );
        eprintln!("SKIPPED tests/browser.rs: no chromium (apt-get install chromium)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_cors_from_allowed_origins_only_and_signs_in_with_the_cookie() {
    if !chromium_available() {
        return;
    }
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_browser");
    let pem = key.public_pem.clone();
    let port = common::binary::free_port();
    let allowed = format!("https://127.0.0.1:{port}");
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.cors.allowed_origins = vec![allowed.clone()];
        c.cors.allow_credentials = true;
        c.auth.session_cookie = true;
        c.auth.authorized_parties = Vec::new();
        c.routes = vec![
            toml::from_str("name = \"admin\"\nprefix = \"/api/admin\"\nauth = \"required\"")
                .unwrap(),
        ];
    })
    .await;
    let token = key.sign(&claims("user_browser"));
    let target = format!("https://localhost:{port}");

    let page = format!("{allowed}/_t/browser#mode=cors&target={target}&token={token}");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&page))
        .await
        .unwrap();
    let from_allowed = outcome(&dom);
    assert_eq!(from_allowed["status"], 200, "{from_allowed}");
    assert_eq!(from_allowed["user_id"], "user_browser");

    let page = format!("{target}/_t/browser#mode=cookie&token={token}");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&page))
        .await
        .unwrap();
    let with_cookie = outcome(&dom);
    assert_eq!(with_cookie["status"], 200, "{with_cookie}");
    assert_eq!(with_cookie["user_id"], "user_browser");

    // The same page from an origin the proxy does not list: the browser refuses the answer.
    let page = format!(
        "http://127.0.0.1:{}/_t/browser#mode=cors&target={target}&token={token}",
        upstream.port
    );
    let dom = tokio::task::spawn_blocking(move || dump_dom(&page))
        .await
        .unwrap();
    let from_elsewhere = outcome(&dom);
    eprintln!("allowed: {from_allowed}\ncookie: {with_cookie}\nelsewhere: {from_elsewhere}");
    assert!(
        from_elsewhere["blocked"].is_string(),
        "the browser let a disallowed origin read the token route: {from_elsewhere}"
    );
    // Blocked by CORS: the proxy refused the preflight (403 origin_not_allowed), so the
    // browser never sent the POST.
    let refused = common::admin::metric(
        &proxy,
        "stream_token_proxy_requests_total{route=\"token\",status=\"4xx\"}",
    );
    assert_eq!(refused, 1.0, "one refused preflight");
    proxy.stop().await;
}
