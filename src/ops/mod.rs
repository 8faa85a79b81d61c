//! Operating the proxy: the admin listener, the access log, certificate and secret reloads.

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod reload;
