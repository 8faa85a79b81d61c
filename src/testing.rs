//! What benchmarks (`benches/`), fuzz targets (`fuzz/`) and integration tests reach inside the
//! crate for, in one place. Not an API: these names follow the code, not semver.

pub use crate::auth::keys::parse_jwks;
pub use crate::auth::{AuthError, KeyStore, Session, Verifier, credentials, unix_now};
pub use crate::connection::ClientConn;
pub use crate::dev_profile::ensure_dev_certificate;
pub use crate::error::ProxyError;
pub use crate::forward::{prepare_request_headers, strip_hop_by_hop};
pub use crate::limits::Limits;
pub use crate::metrics::Metrics;
pub use crate::routes::token::{check_body_user, is_token_path, parse_token_body};
pub use crate::stream_token::StreamMinter;
pub use crate::tls::CertStore;
