//! The shipped production config (deploy/kubernetes/proxy.toml, the ConfigMap's content) is
//! valid for the real parser and validator. Manifests are schema-checked by deploy/validate.sh.

use std::path::Path;

use stream_token_proxy::Config;

#[test]
fn the_kubernetes_proxy_toml_is_a_valid_production_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut config = Config::from_toml(
        &text,
        "deploy/kubernetes/proxy.toml",
        path.parent().unwrap(),
    )
    .unwrap();
    // As in the pod: the secret arrives through the mounted file; here, the environment.
    config
        .apply_env(|k| (k == "STREAM_API_SECRET").then(|| "placeholder".to_string()))
        .unwrap();
    config.validate().expect("the production config validates");
    assert!(!config.dev, "never the dev profile in production");
    assert!(config.tls.enabled);
    assert!(
        !config.server.listen.ip().is_loopback(),
        "reachable from the Service"
    );
    assert!(
        config.upstream.url.authority.host() == "127.0.0.1",
        "Node on the pod's loopback"
    );
    assert!(config.auth.jwks_url.is_some() && config.auth.issuer.is_some());
    assert!(*config.upstream.pool_idle_timeout < std::time::Duration::from_secs(5));
    assert_eq!(
        config.log.format,
        stream_token_proxy::config::LogFormat::Json
    );
}

/// The optional Redis component (deploy/kubernetes/components/redis-limits) sets only
/// variables the proxy reads, and the production config validates as that overlay runs it.
#[test]
fn the_redis_component_sets_known_variables_and_the_config_validates_with_them() {
    use stream_token_proxy::config::{Backend, ENV_OVERRIDES, OnError};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let patch = std::fs::read_to_string(
        root.join("deploy/kubernetes/components/redis-limits/proxy-env.yaml"),
    )
    .unwrap();
    let names: Vec<&str> = patch
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|n| *n != "stream-token-proxy")
        .collect();
    assert_eq!(names, ["LIMITS_BACKEND", "REDIS_URL", "REDIS_PASSWORD"]);
    for name in &names {
        assert!(ENV_OVERRIDES.iter().any(|o| o.var == *name), "{name}");
    }
    let path = root.join("deploy/kubernetes/proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut config = Config::from_toml(&text, "proxy.toml", path.parent().unwrap()).unwrap();
    config
        .apply_env(|k| match k {
            "STREAM_API_SECRET" => Some("placeholder".into()),
            "LIMITS_BACKEND" => Some("redis".into()),
            "REDIS_URL" => Some("redis://stream-token-proxy-redis:6379/0".into()),
            "REDIS_PASSWORD" => Some("placeholder".into()),
            _ => None,
        })
        .unwrap();
    config
        .validate()
        .expect("validates with the component's variables");
    assert_eq!(config.limits.backend, Backend::Redis);
    assert_eq!(config.limits.redis.on_error, OnError::Local);
    assert_eq!(
        config.limits.redis.replicas_hint,
        Some(2),
        "the Deployment's replicas"
    );
}
