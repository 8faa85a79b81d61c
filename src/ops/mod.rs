//! Operating the proxy: the admin listener (and its look at the upstream), the access log,
//! certificate and secret reloads, request traces.

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod reload;
pub(crate) mod traces;
pub(crate) mod upstream_check;
