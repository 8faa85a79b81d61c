//! Operating the proxy: the admin listener, metrics, the access log, reloads.

pub mod access_log;
pub mod admin;
pub mod metrics;
pub mod reload;
