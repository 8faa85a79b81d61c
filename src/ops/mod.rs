//! Operating the proxy: the admin listener, the access log, certificate and secret reloads.

pub mod access_log;
pub mod admin;
pub mod reload;
