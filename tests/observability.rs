//! The observability assets of issue 19 (deploy/observability/), checked against the real
//! thing: Debian's `prometheus` scrapes a running proxy's admin listener, answers the
//! dashboard's queries and loads the alert rules (one of which must fire on a real reload
//! failure); `promtool` checks and unit-tests the rules; the PrometheusRule manifest is the
//! rule file; every metric and label the dashboard and rules name is one the proxy exports.
//!
//! `prometheus` and `promtool` come from the Debian package `prometheus`, which `.ci/run`
//! installs. Missing, the tests fail, except outside CI (`CI` unset) on a machine without
//! apt-get, where they skip with a loud message.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::binary::free_port;
use common::clerk::*;
use common::*;
use http::{Request, StatusCode};
use serde_json::Value;
use stream_token_proxy::config::{PositiveDuration, RateConfig};
use tokio::time::Instant;

/// The scrape job name the alert rules' `up` matchers expect.
const JOB: &str = "stream-token-proxy";
/// The longest any wait on Prometheus may take (start, first scrapes, first rule evaluation).
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);

fn observability_dir() -> PathBuf {
    manifest_dir().join("deploy/observability")
}

fn read(name: &str) -> String {
    let path = observability_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `name` from the PATH, or `None` (after saying so loudly) where the test may skip.
fn tool(name: &str) -> Option<PathBuf> {
    require_tool(
        name,
        "`bash .ci/run` installs it (apt-get install -y prometheus: the Debian package ships \
         both prometheus and promtool)",
    )
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{} {args:?}: {e}", program.display()))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// promtool and the PrometheusRule manifest

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = observability_dir();
    let check = run(&promtool, &["check", "rules", "alerts.yaml"], &dir);
    println!("promtool check rules:\n{}", output_text(&check));
    assert!(check.status.success(), "promtool check rules failed");
    assert!(
        output_text(&check).contains(&format!("SUCCESS: {} rules found", alert_names().len())),
        "every alert counted"
    );
    let test = run(&promtool, &["test", "rules", "alerts.test.yaml"], &dir);
    println!("promtool test rules:\n{}", output_text(&test));
    assert!(test.status.success(), "promtool test rules failed");

    // The manifest's rules, extracted, are valid rules too (the same, see the test below).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("spec.yaml"), manifest_spec()).unwrap();
    let spec = run(&promtool, &["check", "rules", "spec.yaml"], tmp.path());
    assert!(spec.status.success(), "{}", output_text(&spec));
}

/// The unit tests are not vacuous: each change of a threshold, guard or `for:` below makes
/// `promtool test rules` fail.
#[test]
fn the_rule_unit_tests_catch_a_changed_rule() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let alerts = read("alerts.yaml");
    let mutations = [
        ("14 * 86400", "13 * 86400"),
        ("3 * 86400", "2 * 86400"),
        (
            "(stream_token_proxy_certificate_expiry_timestamp_seconds > 0) - time() < 3",
            "stream_token_proxy_certificate_expiry_timestamp_seconds - time() < 3",
        ),
        ("> 15 * 60", "> 20 * 60"),
        (
            "          and on (job, instance)\n          stream_token_proxy_jwks_fetches_total\n",
            "",
        ),
        (") > 0.05", ") > 0.2"),
        ("[5m])) >= 10", "[5m])) >= 1"),
        (") > 0.25", ") > 0.5"),
        ("[10m])) >= 30", "[10m])) >= 1"),
        ("for: 2m", "for: 0m"),
        (
            "          stream_token_proxy_jwks_keys == 0\n",
            "          stream_token_proxy_jwks_keys < 0\n",
        ),
        (
            r#"{outcome="error"} offset 1h"#,
            r#"{outcome="error"} offset 1m"#,
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        observability_dir().join("alerts.test.yaml"),
        tmp.path().join("alerts.test.yaml"),
    )
    .unwrap();
    for (from, to) in mutations {
        assert_eq!(
            alerts.matches(from).count(),
            1,
            "{from:?} is in alerts.yaml once"
        );
        std::fs::write(tmp.path().join("alerts.yaml"), alerts.replacen(from, to, 1)).unwrap();
        let out = run(
            &promtool,
            &["test", "rules", "alerts.test.yaml"],
            tmp.path(),
        );
        assert!(
            !out.status.success(),
            "alerts.test.yaml still passes with {from:?} -> {to:?}"
        );
    }
}

/// The alert names of alerts.yaml, in order.
fn alert_names() -> Vec<String> {
    read("alerts.yaml")
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert: "))
        .map(|name| name.trim().to_string())
        .collect()
}

/// prometheusrule.yaml's `spec:`, un-indented.
fn manifest_spec() -> String {
    let manifest = read("prometheusrule.yaml");
    let (head, spec) = manifest
        .split_once("\nspec:\n")
        .expect("prometheusrule.yaml has a top-level spec:");
    assert!(
        head.contains("\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"),
        "{head}"
    );
    spec.lines()
        .map(|line| {
            if line.is_empty() {
                line
            } else {
                line.strip_prefix("  ")
                    .unwrap_or_else(|| panic!("a spec line not indented under spec: {line:?}"))
            }
        })
        .fold(String::new(), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
}

#[test]
fn the_prometheusrule_manifest_holds_exactly_the_rule_file() {
    let alerts = read("alerts.yaml");
    let rules = &alerts[alerts.find("\ngroups:\n").expect("alerts.yaml has groups:") + 1..];
    let regenerate = "run deploy/observability/generate-prometheusrule.sh";
    assert!(
        manifest_spec() == rules,
        "prometheusrule.yaml's spec is not alerts.yaml's rules: {regenerate}"
    );
    // And it is byte for byte what the script writes.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("prometheusrule.yaml");
    let script = observability_dir().join("generate-prometheusrule.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        std::fs::read_to_string(&out).unwrap() == read("prometheusrule.yaml"),
        "prometheusrule.yaml is stale: {regenerate}"
    );
}

// ---------------------------------------------------------------------------------------------
// Names: what the dashboard and the rules ask for is what the proxy exports

/// Every PromQL expression of the dashboard (panel targets, then template-variable queries).
fn dashboard_exprs(dashboard: &Value) -> (Vec<String>, Vec<String>) {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(
                    target["expr"]
                        .as_str()
                        .expect("every target has an expr")
                        .into(),
                );
            }
            walk(&panel["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| v["query"]["query"].as_str().unwrap().to_string())
        .collect();
    (exprs, variables)
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON")
}

/// `stream_token_proxy_*` names in `text`, each with the label names of its `{...}` matchers.
fn metric_uses(text: &str) -> Vec<(String, Vec<String>)> {
    const PREFIX: &str = "stream_token_proxy_";
    let mut uses = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        let mut labels = Vec::new();
        if let Some(matchers) = rest.strip_prefix('{') {
            let close = matchers.find('}').expect("matchers close");
            for matcher in matchers[..close].split(',') {
                let label = matcher.split(['=', '!']).next().unwrap().trim().to_string();
                labels.push(label);
            }
        }
        uses.push((name, labels));
    }
    uses
}

/// Label names in the `by (...)` clauses of `expr`.
fn by_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .flat_map(|tail| {
            tail[..tail.find(')').expect("by (...) closes")]
                .split(',')
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Sample name -> label names, from an OpenMetrics exposition.
fn exported(exposition: &str) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let Some(inner) = line[name_end..]
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
        {
            for pair in inner.0.split(',') {
                labels.insert(pair.split('=').next().unwrap().to_string());
            }
        }
    }
    out
}

/// Target labels Prometheus (or the operator) adds to every series.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "namespace"];

#[tokio::test]
async fn the_dashboard_and_rules_name_only_metrics_and_labels_the_proxy_exports() {
    // The dashboard is importable as is: a datasource variable rather than a fixed uid.
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "stream-token-proxy");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${datasource}");
            }
        }
    }

    // A proxy with every lazily created family given one series (the Prometheus test below
    // makes most of them happen for real; limiter_keys is set per configured limiter).
    let proxy = TestProxy::start("http://127.0.0.1:9", |_| {}).await;
    let metrics = proxy.handle.as_ref().unwrap().metrics();
    metrics.verification_failure("bad_signature");
    metrics.rate_limited("token_ip");
    metrics.jwks_fetch("ok");
    metrics.upstream_error("connect");
    metrics.connection_closed("idle");
    metrics.reload("certificate", "error");
    metrics.limiter_keys("token_ip", 0);
    let exported = exported(&metrics.encode());
    proxy.stop().await;

    let (exprs, variable_queries) = dashboard_exprs(&dashboard);
    let alerts = read("alerts.yaml");
    let mut checked = BTreeSet::new();
    for text in exprs.iter().chain(&variable_queries).chain([&alerts]) {
        let uses = metric_uses(text);
        let mut known: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for (name, labels) in &uses {
            let Some(has) = exported.get(name) else {
                panic!("{name} (in {text:?}) is not a metric the proxy exports");
            };
            known.extend(has.iter().cloned());
            for label in labels {
                assert!(
                    has.contains(label) || TARGET_LABELS.contains(&label.as_str()),
                    "{name} has no label {label:?} (in {text:?})"
                );
            }
            checked.insert(name.clone());
        }
        for label in by_labels(text) {
            assert!(
                known.contains(&label),
                "by ({label}) names no label of {text:?}"
            );
        }
    }
    // The brief's list: each of these is on the dashboard.
    let on_dashboard = exprs.join("\n");
    for name in [
        "requests_total",
        "upstream_duration_seconds_bucket",
        "verification_failures_total",
        "rate_limited_total",
        "jwks_age_seconds",
        "jwks_fetches_total",
        "certificate_expiry_timestamp_seconds",
        "open_connections",
        "open_tunnels",
        "connection_closes_total",
        "reloads_total",
    ] {
        assert!(
            on_dashboard.contains(&format!("stream_token_proxy_{name}")),
            "{name} is on the dashboard"
        );
    }
    println!("checked {} metric names: {checked:?}", checked.len());
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus

/// A `prometheus` process on 127.0.0.1, killed by its PID when dropped.
struct Prometheus {
    _child: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` scraping `target` every second as job [`JOB`], with `rules` loaded,
    /// and waits (bounded) until it is ready.
    async fn start(binary: &Path, target: SocketAddr, rules: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - '{rules}'\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        // The port was free a moment ago; if another process took it since, try another.
        for _attempt in 0..3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let file = File::create(&log).unwrap();
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(file.try_clone().unwrap()))
                .stderr(Stdio::from(file))
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
            let mut guard = ChildGuard(child);
            let deadline = Instant::now() + PROMETHEUS_WAIT;
            loop {
                if let Some(status) = guard.0.try_wait().unwrap() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("address already in use") {
                        break;
                    }
                    panic!("prometheus exited ({status}):\n{text}");
                }
                if let Ok((StatusCode::OK, _)) = http_get(addr, "/-/ready").await {
                    return Self {
                        _child: guard,
                        addr,
                        log,
                        _dir: dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready in {PROMETHEUS_WAIT:?}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("no free port for prometheus in three attempts");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the HTTP API: its JSON `data`, after checking `status: success`.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {status} {e}: {body}"));
        assert!(
            status == StatusCode::OK && json["status"] == "success",
            "GET {path}: {status} {body}"
        );
        json["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await;
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().unwrap().clone()
    }

    /// Polls `promql` (one series) until its value satisfies `done`; returns the value.
    async fn wait_value(&self, promql: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            let result = self.query(promql).await;
            if let [one] = result.as_slice() {
                let value: f64 = one["value"][1].as_str().unwrap().parse().unwrap();
                if done(value) {
                    return value;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gave up on {promql}: last result {result:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every byte but the unreserved ones as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.1 GET to `addr`, bounded by [`STEP`].
async fn http_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), BoxError> {
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr)).await??;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "localhost")
        .body(empty())?;
    let response = tokio::time::timeout(STEP, send.send_request(request)).await??;
    let status = response.status();
    let body = body_bytes(response).await;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_proxy_runs_the_dashboard_and_loads_the_rules() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    // The proxy in front of Node, with a JWKS server (so jwks_fetches_total exists), a per-user
    // limit of 2 at once (for a real 429) and a 1 s upstream timeout (for a real upstream error).
    let fixture = fixture(|c| {
        c.limits.token_per_user = RateConfig::new(1, PositiveDuration::secs(60), 2);
        c.upstream.response_timeout = PositiveDuration(Duration::from_secs(1));
    })
    .await;
    let client = fixture.proxy.client();
    let handle = fixture.proxy.handle.as_ref().unwrap();
    let admin = handle.admin_addr().expect("the admin listener is on");

    // Traffic, each kind counted somewhere the dashboard shows.
    for _ in 0..3 {
        let response = client.h1(get("/api/hello")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let hang = client.h1(get("/_t/hang")).await;
    assert_eq!(hang.status(), StatusCode::GATEWAY_TIMEOUT);
    let token = fixture.key.sign(&claims("user_limited"));
    assert_eq!(answer(&client, &token).await.0, StatusCode::OK);
    assert_eq!(answer(&client, &token).await.0, StatusCode::OK);
    assert_eq!(
        answer(&client, &token).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let tampered = tampered_signature(&fixture.key.sign(&claims("user_b")));
    assert_eq!(
        answer(&client, &tampered).await,
        (StatusCode::UNAUTHORIZED, "bad_signature".into())
    );
    // A certificate that does not load, reloaded as SIGHUP would: a real reload failure.
    std::fs::write(fixture.proxy.cert_path(), "not a certificate\n").unwrap();
    handle.reload();
    // No quick way here to make the proxy close a connection for a reason (tests/limits.rs
    // and tests/resource_bounds.rs do it for real): count one so the series exists.
    handle.metrics().connection_closed("idle");

    let rules = observability_dir().join("alerts.yaml");
    let prom = Prometheus::start(&prometheus, admin, &rules).await;

    // Scraped: up == 1, then at least three scrapes (rate() needs two samples).
    let up = format!(r#"up{{job="{JOB}"}}"#);
    prom.wait_value(&up, |v| v == 1.0).await;
    prom.wait_value(&format!("count_over_time({up}[1m])"), |v| v >= 3.0)
        .await;
    let value = |metric: &str| {
        let promql = format!("stream_token_proxy_{metric}");
        let prom = &prom;
        async move { prom.wait_value(&promql, |_| true).await }
    };
    assert_eq!(
        value(r#"requests_total{route="forward", status="2xx"}"#).await,
        3.0
    );
    assert_eq!(
        value(r#"requests_total{route="forward", status="5xx"}"#).await,
        1.0
    );
    assert!(value(r#"requests_total{route="token", status="2xx"}"#).await >= 3.0);
    assert_eq!(
        value(r#"requests_total{route="token", status="4xx"}"#).await,
        2.0
    );
    assert_eq!(value(r#"upstream_errors_total{kind="timeout"}"#).await, 1.0);
    assert_eq!(
        value(r#"rate_limited_total{limiter="token_user"}"#).await,
        1.0
    );
    assert_eq!(
        value(r#"verification_failures_total{reason="bad_signature"}"#).await,
        1.0
    );
    assert_eq!(
        value(r#"reloads_total{what="certificate", outcome="error"}"#).await,
        1.0
    );
    assert_eq!(value("jwks_keys").await, 1.0);
    assert!(value(r#"jwks_fetches_total{outcome="ok"}"#).await >= 1.0);
    assert!(value("upstream_duration_seconds_count").await >= 3.0);
    assert!(value("jwks_age_seconds").await < 900.0);
    assert!(value("certificate_expiry_timestamp_seconds - time()").await > 14.0 * 86400.0);
    let series = prom.query(r#"{__name__=~"stream_token_proxy_.+"}"#).await;
    for s in &series {
        assert_eq!(s["metric"]["job"], JOB);
        assert_eq!(s["metric"]["instance"], admin.to_string().as_str());
    }

    // Every dashboard query runs and has data, with the variables as Grafana fills them.
    let dashboard = dashboard();
    let (exprs, variable_queries) = dashboard_exprs(&dashboard);
    let fill = |expr: &str| {
        expr.replace("$__rate_interval", "1m")
            .replace("$job", JOB)
            .replace("$instance", &admin.to_string())
    };
    for expr in &exprs {
        let result = prom.query(&fill(expr)).await;
        assert!(!result.is_empty(), "no data for the dashboard's {expr}");
    }
    // label_values(selector, label) as `group by (label) (selector)`.
    for query in &variable_queries {
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .expect("label_values(...)");
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let label = label.trim();
        let result = prom
            .query(&format!("group by ({label}) ({})", fill(selector)))
            .await;
        let values: Vec<&str> = result
            .iter()
            .map(|r| r["metric"][label].as_str().unwrap())
            .collect();
        let want = if label == "job" {
            JOB.to_string()
        } else {
            admin.to_string()
        };
        assert_eq!(values, [want.as_str()], "{query}");
    }

    // The rules are loaded and evaluate without error.
    let names = alert_names();
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    loop {
        let data = prom.api("/api/v1/rules?type=alert").await;
        let groups = data["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "{data}");
        assert_eq!(groups[0]["name"], "stream-token-proxy");
        let rules = groups[0]["rules"].as_array().unwrap();
        let loaded: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(loaded, names, "every alert of alerts.yaml is loaded");
        for rule in rules {
            assert!(
                rule["health"] != "err",
                "{} fails to evaluate: {}",
                rule["name"],
                rule["lastError"]
            );
        }
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules never evaluated: {data}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The reload failure fires (for: 0), nothing else does.
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    loop {
        let data = prom.api("/api/v1/alerts").await;
        let firing: Vec<&Value> = data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .collect();
        if let [alert] = firing.as_slice() {
            assert_eq!(alert["labels"]["alertname"], "StreamTokenProxyReloadFailed");
            assert_eq!(alert["labels"]["what"], "certificate");
            assert_eq!(alert["labels"]["instance"], admin.to_string().as_str());
            assert_eq!(alert["labels"]["severity"], "warning");
            break;
        }
        assert!(
            firing.is_empty(),
            "only the reload alert may fire: {firing:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the reload alert never fired: {data}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(prom);
}
