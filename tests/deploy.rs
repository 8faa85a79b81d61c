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
